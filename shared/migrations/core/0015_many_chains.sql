-- Core migration 15: many executors, many chains, many pollers in one database (issue 19).
--
-- The identity of a database becomes one row per (executor, chain): what the executor is
-- bound to there (its anchor: the oracle's provider address). An executor is refused only
-- against its own rows (shared/db.py). The oracle's identity of a database made before
-- this migration (meta 'chain_id' and 'provider_address') becomes its row; meta keeps them.
CREATE TABLE IF NOT EXISTS identities (
    executor   TEXT NOT NULL,             -- 'oracle', 'mint', 'distribution', ...
    chain_id   INTEGER NOT NULL,
    anchor     TEXT NOT NULL,             -- what it is bound to on that chain (a contract address)
    created_at REAL NOT NULL,
    PRIMARY KEY (executor, chain_id)
) STRICT;
INSERT INTO identities (executor, chain_id, anchor, created_at)
SELECT 'oracle', CAST(c.value AS INTEGER), COALESCE(p.value, ''), COALESCE(CAST(t.value AS REAL), 0.0)
FROM meta c LEFT JOIN meta p ON p.key = 'provider_address' LEFT JOIN meta t ON t.key = 'created_at'
WHERE c.key = 'chain_id';

-- Block history per poller (shared/chain/history.py): pollers on different chains, or with
-- different confirmations, never prune or roll back each other's hashes. Existing rows are
-- the oracle's indexer's (its poller is named 'indexer').
ALTER TABLE blocks RENAME TO blocks_v14;
CREATE TABLE IF NOT EXISTS blocks (
    poller      TEXT NOT NULL,            -- the poller's name (cursors.name)
    number      INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    parent_hash TEXT,                     -- NULL when the block is known only from its logs
    seen_at     REAL NOT NULL,
    PRIMARY KEY (poller, number)
) STRICT;
INSERT INTO blocks (poller, number, hash, parent_hash, seen_at)
SELECT 'indexer', number, hash, parent_hash, seen_at FROM blocks_v14;
DROP TABLE blocks_v14;
ALTER TABLE reorgs ADD COLUMN poller TEXT NOT NULL DEFAULT 'indexer';

-- Transactions carry their chain: one key may send on several chains, with a nonce sequence
-- per (key, chain). Existing rows get the chain the database recorded; on a database that
-- recorded none they stay NULL until the first transaction manager of their sender adopts
-- them for its chain (shared/tx/ledger.py adopt_unchained), once: a chain id never changes.
ALTER TABLE txs ADD COLUMN chain_id INTEGER;
UPDATE txs SET chain_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'chain_id');
CREATE TRIGGER IF NOT EXISTS trg_txs_chain_frozen BEFORE UPDATE OF chain_id ON txs
WHEN OLD.chain_id IS NOT NULL AND OLD.chain_id IS NOT NEW.chain_id
BEGIN
    SELECT RAISE(ABORT, 'txs.chain_id never changes once set');
END;
DROP INDEX IF EXISTS idx_txs_sender_nonce;
CREATE INDEX IF NOT EXISTS idx_txs_sender_nonce ON txs (sender, chain_id, nonce);
DROP INDEX IF EXISTS idx_txs_mined;
CREATE INDEX IF NOT EXISTS idx_txs_mined ON txs (sender, chain_id, mined_block) WHERE status = 'MINED';
DROP INDEX IF EXISTS idx_txs_unfinal;
CREATE INDEX IF NOT EXISTS idx_txs_unfinal ON txs (sender, chain_id, mined_block) WHERE final_at IS NULL AND status IN ('MINED', 'REVERTED');
DROP INDEX IF EXISTS idx_txs_settled;
CREATE INDEX IF NOT EXISTS idx_txs_settled ON txs (sender, chain_id, mined_block) WHERE status IN ('MINED', 'REVERTED');

-- One owner per sending key and chain. Existing rows get the recorded chain (0 when the
-- database recorded none: such a row names no chain and fences nothing new).
ALTER TABLE senders RENAME TO senders_v14;
CREATE TABLE IF NOT EXISTS senders (
    address      TEXT NOT NULL,              -- checksummed sending address
    chain_id     INTEGER NOT NULL,           -- the chain it sends on
    owner        TEXT NOT NULL,              -- e.g. 'fulfiller'
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    acquired_at  REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    generation   INTEGER NOT NULL DEFAULT 0, -- bumped by every claim; fences the txs insert
    PRIMARY KEY (address, chain_id)
) STRICT;
INSERT INTO senders (address, chain_id, owner, host, pid, acquired_at, heartbeat_at, generation)
SELECT address, COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'chain_id'), 0),
       owner, host, pid, acquired_at, heartbeat_at, generation FROM senders_v14;
DROP TABLE senders_v14;
