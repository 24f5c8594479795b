-- The distribution executor's tables (seed 003, issue 21): tasks (the seed's task JSON),
-- runs (one per task and slot) and transfers (one per recipient of a run). Every status
-- column is moved only by shared.state (workers/distribution/machine.py), with its audit row
-- in `transitions`; counts per status are kept in `state_counts`.
-- No foreign keys (as `transitions`): the storage contract suite creates each machine's rows
-- on their own; the distribution store writes a run and its transfers in one transaction.
-- Amounts: tasks keep the seed's units (whole tokens, decimal strings); runs and transfers
-- keep base units (decimal strings: uint256 does not fit an SQLite INTEGER).

-- The seed's tasks. `recipients` is the seed's JSON array [{address, percentage | amount}].
CREATE TABLE IF NOT EXISTS distribution_tasks (
    task_id        TEXT PRIMARY KEY,          -- the seed's `id`
    network        TEXT NOT NULL,             -- a configured network: an EVM named chain or a Solana cluster
    token          TEXT NOT NULL,             -- the seed's `tokenMint`: ERC-20 address / SPL mint, normalised
    name           TEXT NOT NULL,
    type           TEXT NOT NULL CHECK (type IN ('scheduled','conditional','manual')),
    cron           TEXT,                      -- scheduled: the seed's schedule.cron (5 fields)
    timezone       TEXT NOT NULL DEFAULT 'UTC', -- the cron's IANA time zone
    condition      TEXT,                      -- conditional: JSON {kind, threshold, ...}
    recipients     TEXT NOT NULL,             -- JSON, the seed's units
    total_amount   TEXT,                      -- whole tokens (decimal string); NULL: the sum of fixed amounts
    use_percentage INTEGER NOT NULL CHECK (use_percentage IN (0, 1)),
    enabled        INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    run_count      INTEGER NOT NULL DEFAULT 0,
    last_run_at    REAL,                      -- unix seconds: the last run's creation
    next_run_at    REAL,                      -- scheduled: the next cron slot (unix seconds, UTC)
    condition_streak INTEGER NOT NULL DEFAULT 0, -- conditional: consecutive true checks
    cooldown_until REAL,                      -- conditional: no check fires before this
    last_check_at  REAL,                      -- conditional: the last check of the condition
    condition_state TEXT,                     -- conditional: JSON progress (oracle_fees: the treasury's baseline)
    template       TEXT,                      -- the preset it was made from, if any
    status         TEXT NOT NULL CHECK (status IN ('active','deleted')),
    deleted_at     REAL,
    lease_owner    TEXT,                      -- the scheduler's lease while it checks the task
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_distribution_tasks_claim ON distribution_tasks (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_distribution_tasks_lease ON distribution_tasks (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_distribution_tasks_scope ON distribution_tasks (network, token, created_at);

-- One run per (task, slot): the slot is the cron slot's ISO time (UTC), or for a manual or
-- conditional run the time it was decided, to the millisecond.
CREATE TABLE IF NOT EXISTS distribution_runs (
    run_id         TEXT PRIMARY KEY,
    task_id        TEXT NOT NULL,
    network        TEXT NOT NULL,
    token          TEXT NOT NULL,
    slot           TEXT NOT NULL,
    trigger        TEXT NOT NULL CHECK (trigger IN ('scheduled','conditional','manual')),
    status         TEXT NOT NULL CHECK (status IN ('pending','running','paused','completed','failed')),
    reason         TEXT,                      -- why it is paused or failed
    total_amount   TEXT NOT NULL,             -- base units
    decimals       INTEGER NOT NULL,
    manifest       TEXT NOT NULL,             -- JSON [{address, amount}] in the task's order, base units
    manifest_hash  TEXT NOT NULL,             -- issue 21 §8
    source         TEXT,                      -- the paying address
    started_at     REAL,
    finished_at    REAL,
    lease_owner    TEXT,                      -- the payer working on it
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    UNIQUE (task_id, slot)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_distribution_runs_claim ON distribution_runs (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_distribution_runs_lease ON distribution_runs (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_distribution_runs_task ON distribution_runs (task_id, created_at);
CREATE INDEX IF NOT EXISTS idx_distribution_runs_network ON distribution_runs (network, status);

-- One transfer per recipient of a run, recorded before anything is sent.
CREATE TABLE IF NOT EXISTS distribution_transfers (
    transfer_id    TEXT PRIMARY KEY,          -- <run_id>:<position>
    run_id         TEXT NOT NULL,
    position       INTEGER NOT NULL,          -- the recipient's place in the task's list
    address        TEXT NOT NULL,             -- normalised for the network
    amount         TEXT NOT NULL,             -- base units
    status         TEXT NOT NULL CHECK (status IN ('pending','sent','paid','failed')),
    tx_hash        TEXT,                      -- the transaction (signature) that pays it
    reason         TEXT,                      -- why it failed (decoded revert)
    batch_id       TEXT,                      -- the rail's batch (its meaning belongs to the rail)
    attempts       INTEGER NOT NULL DEFAULT 0,
    sent_at        REAL,
    paid_at        REAL,
    lease_owner    TEXT,
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    UNIQUE (run_id, address),
    UNIQUE (run_id, position)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_distribution_transfers_claim ON distribution_transfers (status, lease_owner, run_id, position);
CREATE INDEX IF NOT EXISTS idx_distribution_transfers_lease ON distribution_transfers (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_distribution_transfers_batch ON distribution_transfers (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_distribution_transfers_tx ON distribution_transfers (tx_hash) WHERE tx_hash IS NOT NULL;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('distribution.task', 'active', 0), ('distribution.task', 'deleted', 0);
CREATE TRIGGER IF NOT EXISTS trg_distribution_task_count_insert AFTER INSERT ON distribution_tasks
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.task' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_task_count_delete AFTER DELETE ON distribution_tasks
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.task' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_task_count_update AFTER UPDATE OF status ON distribution_tasks
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.task' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.task' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('distribution.run', 'pending', 0), ('distribution.run', 'running', 0), ('distribution.run', 'paused', 0), ('distribution.run', 'completed', 0), ('distribution.run', 'failed', 0);
CREATE TRIGGER IF NOT EXISTS trg_distribution_run_count_insert AFTER INSERT ON distribution_runs
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.run' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_run_count_delete AFTER DELETE ON distribution_runs
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.run' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_run_count_update AFTER UPDATE OF status ON distribution_runs
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.run' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.run' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('distribution.transfer', 'pending', 0), ('distribution.transfer', 'sent', 0), ('distribution.transfer', 'paid', 0), ('distribution.transfer', 'failed', 0);
CREATE TRIGGER IF NOT EXISTS trg_distribution_transfer_count_insert AFTER INSERT ON distribution_transfers
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.transfer' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_transfer_count_delete AFTER DELETE ON distribution_transfers
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.transfer' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_transfer_count_update AFTER UPDATE OF status ON distribution_transfers
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.transfer' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.transfer' AND status = NEW.status;
END;

-- ---- views for the sqlite3 CLI ----

-- Tasks the scheduler looks at now: scheduled ones whose next slot has come, conditional
-- ones out of their cool-down.
DROP VIEW IF EXISTS v_distribution_due_tasks;
CREATE VIEW v_distribution_due_tasks AS
SELECT task_id, network, token, name, type, cron, timezone,
       strftime('%Y-%m-%dT%H:%M:%SZ', next_run_at, 'unixepoch') AS next_run_utc,
       condition_streak, strftime('%Y-%m-%dT%H:%M:%SZ', cooldown_until, 'unixepoch') AS cooldown_until_utc,
       run_count
FROM distribution_tasks
WHERE status = 'active' AND enabled = 1 AND (
    (type = 'scheduled' AND next_run_at IS NOT NULL AND next_run_at <= (julianday('now') - 2440587.5) * 86400.0)
    OR (type = 'conditional' AND (cooldown_until IS NULL OR cooldown_until <= (julianday('now') - 2440587.5) * 86400.0))
)
ORDER BY next_run_at, task_id;

-- Run history (the seed's 任务执行历史): each run with its transfers counted by status.
DROP VIEW IF EXISTS v_distribution_run_history;
CREATE VIEW v_distribution_run_history AS
SELECT r.run_id, r.task_id, r.network, r.slot, r.trigger, r.status, r.reason, r.total_amount,
       r.manifest_hash,
       (SELECT COUNT(*) FROM distribution_transfers t WHERE t.run_id = r.run_id) AS recipients,
       (SELECT COUNT(*) FROM distribution_transfers t WHERE t.run_id = r.run_id AND t.status = 'paid') AS paid,
       (SELECT COUNT(*) FROM distribution_transfers t WHERE t.run_id = r.run_id AND t.status = 'failed') AS failed,
       (SELECT COUNT(*) FROM distribution_transfers t WHERE t.run_id = r.run_id AND t.status IN ('pending','sent')) AS open,
       strftime('%Y-%m-%d %H:%M:%f', r.created_at, 'unixepoch') AS created_utc,
       strftime('%Y-%m-%d %H:%M:%f', r.finished_at, 'unixepoch') AS finished_utc
FROM distribution_runs r
ORDER BY r.created_at DESC, r.run_id;

-- Transfers that ended failed, with their reason.
DROP VIEW IF EXISTS v_distribution_failed_transfers;
CREATE VIEW v_distribution_failed_transfers AS
SELECT t.transfer_id, r.task_id, t.run_id, t.position, t.address, t.amount, t.tx_hash, t.reason,
       strftime('%Y-%m-%d %H:%M:%f', t.updated_at, 'unixepoch') AS failed_utc
FROM distribution_transfers t JOIN distribution_runs r ON r.run_id = t.run_id
WHERE t.status = 'failed'
ORDER BY t.updated_at DESC, t.transfer_id;
