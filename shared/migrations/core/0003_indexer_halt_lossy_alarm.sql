-- Core migration 3 (indexer): the halt an operator must clear, a flag for request text that is
-- not what the vault sent, and wrong answers on chain listed in v_stuck.

-- A worker that stopped itself until an operator looks (the indexer facing a chain it cannot
-- trust: another chain id, a reorg deeper than the stored history or HODLAI_MAX_REORG_DEPTH).
-- The active halt of a worker is its row with resumed_at NULL (at most one, by the index);
-- resumed rows stay as the record. The fulfiller signs nothing while the indexer is halted.
CREATE TABLE IF NOT EXISTS halts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    worker      TEXT NOT NULL,                -- 'indexer'
    reason      TEXT NOT NULL,                -- plain words: what was seen, what was not done
    at_block    INTEGER,                      -- the worker's cursor when it halted
    halted_at   REAL NOT NULL,
    resumed_at  REAL,
    resumed_by  TEXT,
    -- 'resume': carry on (the cause was fixed, e.g. the RPC URL); 'allow_rollback': the deep
    -- reorg is real, let the next rollback through once
    resolution  TEXT CHECK (resolution IN ('resume', 'allow_rollback'))
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS idx_halts_active ON halts (worker) WHERE resumed_at IS NULL;

-- 1 when the stored text is not exactly what the event carried (a string that is not UTF-8,
-- stored with U+FFFD; or event data that could not be decoded, stored empty): such a request
-- is FAILED and can never be retried, since an answer would be to text the vault never sent.
ALTER TABLE requests ADD COLUMN content_lossy INTEGER NOT NULL DEFAULT 0 CHECK (content_lossy IN (0, 1));
UPDATE requests SET content_lossy = 1
WHERE status = 'FAILED'
  AND (fail_reason LIKE '%is not valid UTF-8%' OR fail_reason LIKE 'undecodable event data:%');

-- 1 when the row became FULFILLED with an action outside its action set (set by the indexer;
-- a wrong answer on chain), listed in v_stuck through the partial index below.
ALTER TABLE requests ADD COLUMN answer_outside_set INTEGER NOT NULL DEFAULT 0 CHECK (answer_outside_set IN (0, 1));
UPDATE requests SET answer_outside_set = 1
WHERE status = 'FULFILLED' AND fulfilled_action IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM json_each(requests.action_set) AS a WHERE a.value = requests.fulfilled_action);
CREATE INDEX IF NOT EXISTS idx_requests_outside_set ON requests (status) WHERE answer_outside_set = 1;

DROP VIEW IF EXISTS v_stuck;
CREATE VIEW v_stuck AS
SELECT request_id, status, idle_s, lease_owner, why, attempts, block_number FROM (
SELECT request_id, status,
       ROUND(((julianday('now') - 2440587.5) * 86400.0) - updated_at, 1) AS idle_s,
       lease_owner,
       CASE
         WHEN status = 'FAILED' AND content_lossy = 1 THEN 'failed: ' || COALESCE(fail_reason, '?') || ' (cannot be retried: the stored text is not what the vault sent)'
         WHEN status = 'FAILED' THEN 'failed: ' || COALESCE(fail_reason, '?') || ' (hodlai retry ' || request_id || ')'
         WHEN lease_owner IS NOT NULL AND lease_until < ((julianday('now') - 2440587.5) * 86400.0)
           THEN 'lease of ' || lease_owner || ' expired; will be taken again'
         WHEN lease_owner IS NOT NULL THEN 'being worked on by ' || lease_owner
         WHEN status = 'PENDING' THEN 'waiting for an inference worker (shard key ' || shard_key || ')'
         WHEN status = 'ANSWERED' THEN 'answered; waiting for the fulfiller'
         WHEN status = 'PROCESSED' THEN 'tx sent (' || COALESCE((SELECT t.tx_hash FROM txs t WHERE t.request_id = requests.request_id ORDER BY t.id DESC LIMIT 1), '?') || '); waiting for the fulfilled event'
       END AS why,
       attempts, block_number, updated_at
FROM requests
WHERE status IN ('PENDING', 'ANSWERED', 'PROCESSED', 'FAILED')
UNION ALL
-- The alarm: fulfilled on chain with an action outside the request's current action set.
SELECT request_id, status,
       ROUND(((julianday('now') - 2440587.5) * 86400.0) - updated_at, 1) AS idle_s,
       lease_owner,
       'WRONG ANSWER on chain: fulfilled with ' || json_quote(fulfilled_action) || ', not in its action set ' || action_set || ' (tx ' || COALESCE(fulfilled_tx_hash, '?') || ', generation ' || generation || ')' AS why,
       attempts, block_number, updated_at
FROM requests
WHERE answer_outside_set = 1 AND status = 'FULFILLED'
)
ORDER BY updated_at;
