-- Core migration 5: the transaction ledger serves any executor. A purpose names (kind,
-- subject, version, fingerprint) instead of (request id, generation, content hash), and
-- every intended transaction has an idempotency key, unique in txs (shared/tx/ledger.py).
-- (Renaming a column also rewrites the views that use it.)
ALTER TABLE txs RENAME COLUMN request_id TO subject;
ALTER TABLE txs RENAME COLUMN generation TO version;
ALTER TABLE txs RENAME COLUMN content_hash TO fingerprint;
ALTER TABLE txs ADD COLUMN idempotency_key TEXT;
-- Rows signed before keys existed get one that names them.
UPDATE txs SET idempotency_key = 'legacy:' || id WHERE idempotency_key IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS idx_txs_idempotency ON txs (idempotency_key);
DROP INDEX IF EXISTS idx_txs_request;
CREATE INDEX IF NOT EXISTS idx_txs_subject ON txs (purpose, subject, version);

DROP VIEW IF EXISTS v_open_txs;
CREATE VIEW v_open_txs AS
SELECT id, purpose, subject, nonce, tx_hash, status, ROUND(((julianday('now') - 2440587.5) * 86400.0) - created_at, 1) AS age_s, error
FROM txs WHERE status IN ('SIGNED', 'BROADCAST') ORDER BY nonce;
