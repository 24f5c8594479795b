-- Oracle migration 1: the oracle's tables become the oracle's (issue 19). Core migrations
-- 1..14 created them, before executors had migration sets of their own; a database made
-- then keeps them, rows and all, and this migration adopts them: every statement is
-- CREATE ... IF NOT EXISTS or INSERT OR IGNORE, except the two views, which are recreated
-- with the same text. On a new database (whose core set starts from its baseline, without
-- these tables) it creates them. Either way the schema is the same afterwards.

-- One row per reasoning request (HoldAI_ReasoningRequested), whatever its state.
CREATE TABLE IF NOT EXISTS requests (
    request_id     TEXT PRIMARY KEY CHECK (request_id GLOB '[0-9]*' AND request_id NOT GLOB '*[^0-9]*'),
    shard_key      INTEGER NOT NULL,          -- request_id mod lcm(1..42); see request_id.py
    status         TEXT NOT NULL CHECK (status IN ('PENDING','ANSWERED','PROCESSED','FULFILLED','FAILED')),
    generation     INTEGER NOT NULL DEFAULT 1, -- +1 whenever a reorg replaces the content
    -- the request as emitted on chain
    requester      TEXT NOT NULL,
    model          TEXT NOT NULL,
    system_prompt  TEXT NOT NULL,
    state_string   TEXT NOT NULL,
    action_set     TEXT NOT NULL,             -- JSON array of strings
    content_hash   TEXT NOT NULL,             -- keccak of requester + ABI data; detects replaced content
    block_number   INTEGER NOT NULL,
    block_hash     TEXT NOT NULL,
    tx_hash        TEXT NOT NULL,
    log_index      INTEGER NOT NULL,
    -- work in flight: a lease, not a status (DESIGN.md section 3)
    lease_owner    TEXT,
    lease_until    REAL,
    -- the answer (inference)
    attempts       INTEGER NOT NULL DEFAULT 0, -- LLM attempts spent on the current generation
    answer_action  TEXT,
    answer_cid     TEXT,
    reasoning      TEXT,                      -- the JSON reasoning trace whose CID is answer_cid
    answered_at    REAL,
    -- the fulfilment seen on chain (indexer)
    fulfilled_block    INTEGER,
    fulfilled_tx_hash  TEXT,
    fulfilled_action   TEXT,
    fulfilled_cid      TEXT,
    -- terminal failure
    fail_reason    TEXT,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    -- 1 when the stored text is not exactly what the event carried (not UTF-8: stored with
    -- U+FFFD; undecodable: stored empty); such a request is FAILED and is never retried
    content_lossy  INTEGER NOT NULL DEFAULT 0 CHECK (content_lossy IN (0, 1)),
    -- 1 when it became FULFILLED with an action outside its action set (a wrong answer on
    -- chain; set by the indexer, listed in v_stuck)
    answer_outside_set INTEGER NOT NULL DEFAULT 0 CHECK (answer_outside_set IN (0, 1))
) STRICT;

-- Invariant: lease_owner IS NULL exactly when lease_until IS NULL.
-- Claims take unleased rows of one status in chain order from idx_requests_claim without
-- stepping over the rows already leased (which would make a large backlog quadratic), and
-- expired leases (a crashed worker's rows) from the small idx_requests_lease.
CREATE INDEX IF NOT EXISTS idx_requests_claim ON requests (status, lease_owner, block_number, log_index);
CREATE INDEX IF NOT EXISTS idx_requests_lease ON requests (status, lease_until) WHERE lease_until IS NOT NULL;
-- Listing one status newest first (hodlai requests --status S).
CREATE INDEX IF NOT EXISTS idx_requests_status_order ON requests (status, block_number, log_index);
CREATE INDEX IF NOT EXISTS idx_requests_block ON requests (block_number);
-- The few FULFILLED rows whose answer is outside their action set, for v_stuck.
CREATE INDEX IF NOT EXISTS idx_requests_outside_set ON requests (status) WHERE answer_outside_set = 1;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('oracle.request', 'PENDING', 0), ('oracle.request', 'ANSWERED', 0), ('oracle.request', 'PROCESSED', 0), ('oracle.request', 'FULFILLED', 0), ('oracle.request', 'FAILED', 0);
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_insert AFTER INSERT ON requests
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'oracle.request' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_delete AFTER DELETE ON requests
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'oracle.request' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_update AFTER UPDATE OF status ON requests
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'oracle.request' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'oracle.request' AND status = NEW.status;
END;

-- HoldAI_ReasoningFulfilled events as seen on chain. Kept apart from requests so that an
-- event seen before its request (or orphaned by a reorg) is neither lost nor half-applied.
CREATE TABLE IF NOT EXISTS fulfillments (
    request_id    TEXT PRIMARY KEY,
    requester     TEXT NOT NULL,
    result_action TEXT NOT NULL,
    reasoning_cid TEXT NOT NULL,
    block_number  INTEGER NOT NULL,
    block_hash    TEXT NOT NULL,
    tx_hash       TEXT NOT NULL,
    log_index     INTEGER NOT NULL,
    prior_status  TEXT,                       -- status of the request row before FULFILLED
    seen_at       REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_fulfillments_block ON fulfillments (block_number);
-- Fulfilments seen before their request (prior_status NULL): usually none, looked up per poll.
CREATE INDEX IF NOT EXISTS idx_fulfillments_unapplied ON fulfillments (request_id) WHERE prior_status IS NULL;

DROP VIEW IF EXISTS v_status_counts;
CREATE VIEW v_status_counts AS
SELECT status, n AS requests FROM state_counts WHERE machine = 'oracle.request'
ORDER BY CASE status WHEN 'PENDING' THEN 1 WHEN 'ANSWERED' THEN 2 WHEN 'PROCESSED' THEN 3
                     WHEN 'FULFILLED' THEN 4 ELSE 5 END;

-- Everything not finished, oldest first, with a plain-words reason it is where it is; and
-- every FULFILLED request whose answer on chain is not in its action set (an alarm).
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
         WHEN status = 'PROCESSED' THEN 'tx sent (' || COALESCE((SELECT t.tx_hash FROM txs t WHERE t.subject = requests.request_id ORDER BY t.id DESC LIMIT 1), '?') || '); waiting for the fulfilled event'
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
