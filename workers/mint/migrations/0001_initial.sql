-- The mint executor's tables (seeds 000 and 001): the seed's ai_agent_wallets and
-- ai_agent_tasks with the seed's columns (times are Unix seconds, REAL, as every table of the
-- node; amounts are decimal TEXT in USDC base units, as the seed's VARCHAR(78)), plus what
-- exactly-once needs: one row per x402 purchase (mint_payments, linked to its EIP-3009
-- authorization in the core ledger and to its mint transaction), one row per funding or
-- refund authorization the relayer submits (mint_transfers), and the chat's turns.
-- Every status column is moved only by shared.state (workers/mint/machine.py).

-- One agent wallet per user address. The key is derived in the core vault (table
-- `wallets`, AES-256-GCM under the key file's agentEncryptionKey); encrypted_private_key
-- names that vault row ("vault:<address>") and never holds key material itself.
CREATE TABLE IF NOT EXISTS ai_agent_wallets (
    id                    TEXT PRIMARY KEY,
    user_address          TEXT NOT NULL UNIQUE,   -- checksummed
    agent_address         TEXT NOT NULL UNIQUE,   -- checksummed
    encrypted_private_key TEXT NOT NULL,
    usdc_balance          TEXT DEFAULT '0',       -- at the last check, base units
    last_balance_check    REAL,
    created_at            REAL NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS ai_agent_tasks (
    id               TEXT PRIMARY KEY,
    user_address     TEXT NOT NULL,
    agent_wallet_id  TEXT NOT NULL,
    token_address    TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity >= 1),
    price_per_mint   TEXT NOT NULL,
    total_cost       TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending_payment' CHECK (status IN ('pending_payment','funded','processing','completed','failed','cancelled')),
    mints_completed  INTEGER NOT NULL DEFAULT 0,
    mints_failed     INTEGER NOT NULL DEFAULT 0,
    funding_tx_hash  TEXT,
    error_message    TEXT,
    lease_owner      TEXT,
    lease_until      REAL,
    created_at       REAL NOT NULL,
    started_at       REAL,
    completed_at     REAL,
    -- beyond the seed: what the task pays with and whom, fixed at creation
    agent_address    TEXT NOT NULL DEFAULT '',
    chain_id         INTEGER NOT NULL DEFAULT 0,
    usdc_address     TEXT NOT NULL DEFAULT '',
    server_url       TEXT NOT NULL DEFAULT '',
    pay_to           TEXT NOT NULL DEFAULT '',
    payment_deadline INTEGER NOT NULL DEFAULT 0,  -- created_at + HODLAI_MINT_PAYMENT_TIMEOUT_S, whole seconds
    funded_amount    TEXT NOT NULL DEFAULT '0',   -- what the task was credited with when funded
    retry_round      INTEGER NOT NULL DEFAULT 0,  -- a retry starts a new round of attempts
    updated_at       REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_ai_agent_tasks_claim ON ai_agent_tasks (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_ai_agent_tasks_lease ON ai_agent_tasks (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_ai_agent_tasks_status ON ai_agent_tasks (status, created_at) WHERE status IN ('pending_payment', 'funded', 'processing');
CREATE INDEX IF NOT EXISTS idx_ai_agent_tasks_user ON ai_agent_tasks (user_address, created_at);

-- One x402 purchase of one mint. id is the x402 payment identifier (fixed before signing);
-- authorization_id the agent wallet's EIP-3009 authorization in the core ledger; accepted,
-- resource and extensions the server's requirements as paid, and payment_header the exact
-- header, recorded before it is sent, so the same payment can be sent again after a crash. At most one live (prepared/signed) or minted row per unit.
CREATE TABLE IF NOT EXISTS mint_payments (
    id               TEXT PRIMARY KEY,
    task_id          TEXT NOT NULL,
    unit             INTEGER NOT NULL,            -- 0 .. quantity-1
    attempt          INTEGER NOT NULL,
    retry_round      INTEGER NOT NULL DEFAULT 0,
    value            TEXT NOT NULL,
    server_url       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('prepared','signed','minted','failed')),
    authorization_id INTEGER,
    accepted         TEXT,
    resource         TEXT,
    extensions       TEXT,
    payment_header   TEXT,                        -- the PAYMENT-SIGNATURE header as sent (JSON of the headers)
    mint_tx_hash     TEXT,
    settle_tx_hash   TEXT,
    minted_amount    TEXT,
    error            TEXT,
    lease_owner      TEXT,
    lease_until      REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    UNIQUE (task_id, unit, attempt)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_mint_payments_claim ON mint_payments (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_mint_payments_lease ON mint_payments (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS idx_mint_payments_one_live ON mint_payments (task_id, unit) WHERE status IN ('prepared', 'signed', 'minted');
-- One mint transaction pays for one payment at most (a mint found on chain is claimed once).
CREATE UNIQUE INDEX IF NOT EXISTS idx_mint_payments_mint_tx ON mint_payments (mint_tx_hash) WHERE mint_tx_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_mint_payments_open ON mint_payments (status, task_id) WHERE status IN ('prepared', 'signed');

-- A user's funding authorization (kind funding) or the agent wallet's refund (kind refund),
-- submitted by the relayer. id is the idempotency key, from (token, from, nonce).
CREATE TABLE IF NOT EXISTS mint_transfers (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('funding','refund')),
    task_id          TEXT NOT NULL,
    token            TEXT NOT NULL,
    chain_id         INTEGER NOT NULL,
    from_address     TEXT NOT NULL,
    to_address       TEXT NOT NULL,
    value            TEXT NOT NULL,
    valid_after      INTEGER NOT NULL,
    valid_before     INTEGER NOT NULL,
    nonce            TEXT NOT NULL,
    signature        TEXT NOT NULL,
    authorization_id INTEGER,                     -- a refund's row in the core ledger
    status           TEXT NOT NULL CHECK (status IN ('recorded','submitted','confirmed','failed')),
    tx_hash          TEXT,
    answer           TEXT,                        -- JSON: what the fund route answered first
    error            TEXT,
    lease_owner      TEXT,
    lease_until      REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    UNIQUE (token, from_address, nonce)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_mint_transfers_claim ON mint_transfers (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_mint_transfers_lease ON mint_transfers (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_mint_transfers_task ON mint_transfers (task_id, kind);
CREATE INDEX IF NOT EXISTS idx_mint_transfers_open ON mint_transfers (status) WHERE status IN ('recorded', 'submitted');

-- The chat, per user: each turn in order.
CREATE TABLE IF NOT EXISTS ai_agent_conversations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_address TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('user','assistant')),
    content      TEXT NOT NULL,
    task_id      TEXT,
    created_at   REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_ai_agent_conversations_user ON ai_agent_conversations (user_address, id);

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('mint.task', 'pending_payment', 0), ('mint.task', 'funded', 0), ('mint.task', 'processing', 0), ('mint.task', 'completed', 0), ('mint.task', 'failed', 0), ('mint.task', 'cancelled', 0);
CREATE TRIGGER IF NOT EXISTS trg_mint_task_count_insert AFTER INSERT ON ai_agent_tasks
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.task' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_task_count_delete AFTER DELETE ON ai_agent_tasks
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.task' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_task_count_update AFTER UPDATE OF status ON ai_agent_tasks
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.task' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.task' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('mint.payment', 'prepared', 0), ('mint.payment', 'signed', 0), ('mint.payment', 'minted', 0), ('mint.payment', 'failed', 0);
CREATE TRIGGER IF NOT EXISTS trg_mint_payment_count_insert AFTER INSERT ON mint_payments
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.payment' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_payment_count_delete AFTER DELETE ON mint_payments
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.payment' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_payment_count_update AFTER UPDATE OF status ON mint_payments
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.payment' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.payment' AND status = NEW.status;
END;

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('mint.transfer', 'recorded', 0), ('mint.transfer', 'submitted', 0), ('mint.transfer', 'confirmed', 0), ('mint.transfer', 'failed', 0);
CREATE TRIGGER IF NOT EXISTS trg_mint_transfer_count_insert AFTER INSERT ON mint_transfers
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.transfer' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_transfer_count_delete AFTER DELETE ON mint_transfers
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.transfer' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_transfer_count_update AFTER UPDATE OF status ON mint_transfers
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.transfer' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.transfer' AND status = NEW.status;
END;


-- The seed's monitoring queries (000 "监控", "故障处理"; 001 "查看超时任务") as views.
CREATE VIEW IF NOT EXISTS v_mint_pending_tasks AS
SELECT id, token_address, quantity, mints_completed, status
FROM ai_agent_tasks WHERE status IN ('funded', 'processing') ORDER BY created_at;

CREATE VIEW IF NOT EXISTS v_mint_task_counts AS
SELECT status, COUNT(*) AS n FROM ai_agent_tasks GROUP BY status;

CREATE VIEW IF NOT EXISTS v_mint_failed_tasks AS
SELECT id, token_address, error_message
FROM ai_agent_tasks WHERE status = 'failed' ORDER BY created_at DESC;

CREATE VIEW IF NOT EXISTS v_mint_timeout_tasks AS
SELECT id, user_address, quantity, status, error_message, created_at, completed_at,
       (completed_at - created_at) / 60.0 AS duration_minutes
FROM ai_agent_tasks WHERE status = 'cancelled' AND error_message LIKE '%timeout%'
ORDER BY created_at DESC;

-- Agent wallets holding less than 1 USDC at their last check (amounts compared as numbers,
-- not as the seed's strings).
CREATE VIEW IF NOT EXISTS v_mint_low_balances AS
SELECT agent_address, usdc_balance
FROM ai_agent_wallets WHERE CAST(usdc_balance AS INTEGER) < 1000000;
