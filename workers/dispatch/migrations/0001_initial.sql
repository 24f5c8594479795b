-- The dispatcher's tables (seed 004): agents, jobs from the remote queue, one
-- JobDistributionRecord per job and one JobDistributionAgent row per agent called (or
-- planned). Every status column is moved only by shared.state (workers/dispatch/machine.py),
-- with its audit row in `transitions`; counts per status are kept in `state_counts`.
-- No foreign keys (as `transitions`): the storage contract suite creates each machine's rows
-- on their own; the dispatcher's store writes parents and children in one transaction.

-- The agents a job can be sent to: what they offer, the figures kept on every completion,
-- health and circuit breaker.
CREATE TABLE IF NOT EXISTS agents (
    agent_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    endpoint       TEXT NOT NULL UNIQUE,      -- base URL: POST {endpoint}/execute, GET {endpoint}/health
    tags           TEXT NOT NULL DEFAULT '[]',-- JSON array of strings, sorted
    category       TEXT NOT NULL,
    skill_level    INTEGER NOT NULL DEFAULT 0 CHECK (skill_level BETWEEN 0 AND 100),
    reputation     REAL NOT NULL DEFAULT 0.5 CHECK (reputation BETWEEN 0 AND 1),
    status         TEXT NOT NULL CHECK (status IN ('ACTIVE','DISABLED')),
    -- figures updated on every completion (exact statistics: GET /api/dispatch/stats)
    calls          INTEGER NOT NULL DEFAULT 0,
    successes      INTEGER NOT NULL DEFAULT 0,
    errors         INTEGER NOT NULL DEFAULT 0,
    timeouts       INTEGER NOT NULL DEFAULT 0,
    wins           INTEGER NOT NULL DEFAULT 0,
    late_results   INTEGER NOT NULL DEFAULT 0,
    success_rate   REAL,                      -- successes / (successes + errors + timeouts)
    latency_p50_ms REAL,                      -- over the dispatcher's recent window
    latency_p95_ms REAL,
    -- health checks (GET {endpoint}/health every HODLAI_DISPATCH_HEALTH_INTERVAL_S)
    health         TEXT NOT NULL DEFAULT 'unknown' CHECK (health IN ('unknown','ok','failing')),
    last_health_at REAL,
    last_health_error TEXT,
    -- circuit breaker: open after N consecutive failures, one probe after the cool-down
    breaker        TEXT NOT NULL DEFAULT 'closed' CHECK (breaker IN ('closed','open','half_open')),
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    breaker_open_until REAL,
    lease_owner    TEXT,                      -- the health checker's lease
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_agents_claim ON agents (status, lease_owner, last_health_at);
CREATE INDEX IF NOT EXISTS idx_agents_lease ON agents (status, lease_until) WHERE lease_until IS NOT NULL;

-- One row per job of the remote queue, from its fetch to its outcome's delivery.
CREATE TABLE IF NOT EXISTS jobs (
    job_id         TEXT PRIMARY KEY,          -- the queue's id
    status         TEXT NOT NULL CHECK (status IN ('OPEN','DISTRIBUTED','IN_PROGRESS','COMPLETED','FAILED','EXPIRED','CANCELLED')),
    category       TEXT NOT NULL DEFAULT '',
    tags           TEXT NOT NULL DEFAULT '[]',-- JSON array: an agent must have every one
    skill_level    INTEGER NOT NULL DEFAULT 0,-- the minimum skill level
    input          TEXT NOT NULL DEFAULT 'null', -- JSON: what the agents are sent
    result_schema  TEXT NOT NULL DEFAULT '{}',-- JSON Schema a result must match to count
    deadline       REAL,                      -- unix seconds, across the whole pipeline; NULL only for an invalid job without one
    queue_deliveries INTEGER NOT NULL DEFAULT 1, -- times the queue had handed it out
    fetched_at     REAL NOT NULL,
    raw            TEXT,                      -- the job as fetched (cut to 4 KiB), kept only when it was invalid
    acked_at       REAL,                      -- the queue acknowledged our taking it
    next_match_at  REAL,                      -- no eligible agent: match again from then
    rounds         INTEGER NOT NULL DEFAULT 0,-- rounds of agent calls begun
    retries        INTEGER NOT NULL DEFAULT 0,-- rounds begun because every agent of the last failed
    result         TEXT,                      -- JSON: the winning result
    winner_agent_id TEXT,
    winner_work_id TEXT,
    finished_at    REAL,
    fail_code      TEXT,                      -- invalid_job, agents_failed, no_agents, expired, cancelled
    fail_reason    TEXT,
    -- the outcome's delivery to the queue: the key is fixed with the outcome, in the same
    -- transaction, so a re-post after a crash is the same delivery (exactly once)
    delivery_key   TEXT UNIQUE,
    delivered_at   REAL,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    delivery_error TEXT,
    cancel_requested_at REAL,                 -- an operator asked (API/CLI); the dispatcher acts
    cancel_requested_by TEXT,
    lease_owner    TEXT,
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_jobs_claim ON jobs (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_lease ON jobs (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_jobs_status_order ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_created ON jobs (created_at);
-- Outcomes decided and not yet accepted by the queue: the delivery sweep's work list.
CREATE INDEX IF NOT EXISTS idx_jobs_undelivered ON jobs (updated_at) WHERE delivery_key IS NOT NULL AND delivered_at IS NULL;
-- Cancels asked for and not yet acted on.
CREATE INDEX IF NOT EXISTS idx_jobs_cancel ON jobs (cancel_requested_at) WHERE cancel_requested_at IS NOT NULL AND delivery_key IS NULL;

-- The seed's JobDistributionRecord: one per job, with the explainable log of every round.
CREATE TABLE IF NOT EXISTS job_distributions (
    distribution_id TEXT PRIMARY KEY,
    job_id         TEXT NOT NULL UNIQUE,
    mode           TEXT NOT NULL CHECK (mode IN ('concurrent','hedged')),
    max_agents     INTEGER NOT NULL,
    hedge_delay_ms REAL,                      -- hedged: the category's p95 when the job began
    explain        TEXT NOT NULL,             -- JSON: per round, agents considered, scores, why chosen
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;

-- The seed's JobDistributionAgent: one per (job, agent, round).
CREATE TABLE IF NOT EXISTS job_distribution_agents (
    work_id        TEXT PRIMARY KEY,
    distribution_id TEXT NOT NULL,
    job_id         TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    category       TEXT NOT NULL,             -- the job's, for per-category statistics
    round          INTEGER NOT NULL,
    rank           INTEGER NOT NULL,          -- position in the round's ranking (0 = best)
    score          REAL NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('concurrent','primary','hedge','failover')),
    status         TEXT NOT NULL CHECK (status IN ('IDLE','ASSIGNED','WORKING','COMPLETED','FAILED','CANCELLED','TIMEOUT')),
    started_at     REAL,                      -- the call was sent
    finished_at    REAL,
    latency_ms     REAL,                      -- from the call to its answer (or timeout)
    -- how the call ended for the job: won; error / invalid (outside the result schema);
    -- timeout; cancelled (another won first, or the job ended); orphaned (the dispatcher
    -- restarted mid-call: not the agent's doing); not_called
    outcome        TEXT CHECK (outcome IN ('won','error','invalid','timeout','cancelled','orphaned','not_called')),
    error          TEXT,
    result         TEXT,                      -- JSON: the answer, when it was a result
    won            INTEGER NOT NULL DEFAULT 0 CHECK (won IN (0, 1)),
    cancel_sent_at REAL,
    -- the answer that came after the call was cancelled: counted for the agent, never the job
    late_at        REAL,
    late_latency_ms REAL,
    late_outcome   TEXT CHECK (late_outcome IN ('valid','invalid','error','timeout','cancelled')),
    late_result    TEXT,
    lease_owner    TEXT,
    lease_until    REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    UNIQUE (distribution_id, agent_id, round)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_jda_claim ON job_distribution_agents (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_jda_lease ON job_distribution_agents (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_jda_job ON job_distribution_agents (job_id);
CREATE INDEX IF NOT EXISTS idx_jda_agent ON job_distribution_agents (agent_id, category);

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('dispatch.job', 'OPEN', 0), ('dispatch.job', 'DISTRIBUTED', 0), ('dispatch.job', 'IN_PROGRESS', 0), ('dispatch.job', 'COMPLETED', 0), ('dispatch.job', 'FAILED', 0), ('dispatch.job', 'EXPIRED', 0), ('dispatch.job', 'CANCELLED', 0);
CREATE TRIGGER IF NOT EXISTS trg_dispatch_job_count_insert AFTER INSERT ON jobs
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.job' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_job_count_delete AFTER DELETE ON jobs
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.job' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_job_count_update AFTER UPDATE OF status ON jobs
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.job' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.job' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('dispatch.distribution_agent', 'IDLE', 0), ('dispatch.distribution_agent', 'ASSIGNED', 0), ('dispatch.distribution_agent', 'WORKING', 0), ('dispatch.distribution_agent', 'COMPLETED', 0), ('dispatch.distribution_agent', 'FAILED', 0), ('dispatch.distribution_agent', 'CANCELLED', 0), ('dispatch.distribution_agent', 'TIMEOUT', 0);
CREATE TRIGGER IF NOT EXISTS trg_dispatch_distribution_agent_count_insert AFTER INSERT ON job_distribution_agents
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.distribution_agent' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_distribution_agent_count_delete AFTER DELETE ON job_distribution_agents
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.distribution_agent' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_distribution_agent_count_update AFTER UPDATE OF status ON job_distribution_agents
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.distribution_agent' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.distribution_agent' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('dispatch.agent', 'ACTIVE', 0), ('dispatch.agent', 'DISABLED', 0);
CREATE TRIGGER IF NOT EXISTS trg_dispatch_agent_count_insert AFTER INSERT ON agents
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.agent' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_agent_count_delete AFTER DELETE ON agents
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.agent' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_dispatch_agent_count_update AFTER UPDATE OF status ON agents
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'dispatch.agent' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'dispatch.agent' AND status = NEW.status;
END;

