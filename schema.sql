-- hodlai state store: the whole current schema, readable with sqlite3. Not executed by the
-- node: databases are built by the migration sets in shared/migrations/<set>/NNNN_*.sql,
-- and tests/test_migrations.py checks that migrating an empty database gives exactly this.
-- A schema change is a new migration file AND an edit here.
--
-- The core's tables come first (set 'core', shared/migrations/core), then each executor's:
-- the oracle's (set 'oracle', workers/oracle/migrations), the dispatcher's (set 'dispatch').
--
-- Times are Unix seconds (REAL). uint256 values (request ids, wei amounts) are decimal TEXT:
-- they do not fit SQLite's 64-bit INTEGER (see workers/oracle/request_id.py).

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,   -- 'created_at', ...; before core migration 15 also the oracle's 'chain_id', 'provider_address'
    value TEXT NOT NULL
) STRICT;

-- What each executor is bound to on each chain it uses (shared/db.py check_executor_identity):
-- an executor is refused only against its own rows (core migration 15).
CREATE TABLE IF NOT EXISTS identities (
    executor   TEXT NOT NULL,             -- 'oracle', 'mint', 'distribution', ...
    chain_id   INTEGER NOT NULL,
    anchor     TEXT NOT NULL,             -- what it is bound to on that chain (a contract address)
    created_at REAL NOT NULL,
    PRIMARY KEY (executor, chain_id)
) STRICT;

-- Applied migrations, per set (the core, each executor); see shared/migrations.
CREATE TABLE IF NOT EXISTS schema_migrations (
    set_name   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (set_name, version)
) STRICT;

-- Entities per (machine, status), kept exact by each machine table's triggers in the same
-- transaction as the change, so that 'hodlai status' and v_status_counts answer in O(1) at
-- millions of rows (shared/state: count_triggers_sql writes them).
CREATE TABLE IF NOT EXISTS state_counts (
    machine TEXT NOT NULL,                    -- 'oracle.request', ...
    status  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (machine, status)
) STRICT;


-- The audit trail: one row per state change of any declared machine (shared/state), written
-- in the same transaction as the change. No foreign key: the trail outlives an entity that is
-- deleted (a request a reorg takes back: to_status 'REMOVED').
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_id   TEXT NOT NULL,                -- the entity's key in its machine's table
    from_status TEXT,                         -- NULL when the row is created
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,                -- 'indexer', 'inference-0/2:pid', 'fulfiller', 'operator'
    at          REAL NOT NULL,
    note        TEXT,
    machine     TEXT NOT NULL,                -- the machine's name ('oracle.request', ...; no default: migration 16)
    generation  INTEGER                       -- the entity's generation then (machines that have one)
) STRICT;
CREATE INDEX IF NOT EXISTS idx_transitions_entity ON transitions (machine, entity_id, id);

-- How far each scanner has accepted the chain (the last block fully ingested).
CREATE TABLE IF NOT EXISTS cursors (
    name         TEXT PRIMARY KEY,            -- 'indexer'
    block_number INTEGER NOT NULL,
    updated_at   REAL NOT NULL
) STRICT;

-- Hashes of accepted blocks, to detect a reorg by comparison (anvil and many nodes never
-- deliver logs with removed=true): the header at the end of every accepted range, and every
-- block an accepted log came from. Pruned to HODLAI_INDEXER_BLOCK_HISTORY blocks below the
-- cursor, far deeper than any expected reorg.
CREATE TABLE IF NOT EXISTS blocks (
    poller      TEXT NOT NULL,            -- the poller's name (cursors.name): history per poller
    number      INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    parent_hash TEXT,                     -- NULL when the block is known only from its logs
    seen_at     REAL NOT NULL,
    PRIMARY KEY (poller, number)
) STRICT;

-- Reorgs the indexer rolled back, for 'hodlai status' and the runbook.
CREATE TABLE IF NOT EXISTS reorgs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    detected_at   REAL NOT NULL,
    at_block      INTEGER NOT NULL,           -- the first orphaned block
    depth         INTEGER NOT NULL,
    deeper_than_confirmations INTEGER NOT NULL CHECK (deeper_than_confirmations IN (0, 1)),
    note          TEXT,
    poller        TEXT NOT NULL DEFAULT 'indexer' -- the poller that rolled back (migration 15; older rows: the indexer)
) STRICT;

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

-- Every transaction the node signed, recorded BEFORE it is broadcast (shared/tx/ledger.py).
-- A nonce is "open" while one of its rows is SIGNED or BROADCAST; all rows of one nonce are
-- alternatives (replacements, a cancel), of which at most one is ever mined.
CREATE TABLE IF NOT EXISTS txs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    purpose         TEXT NOT NULL,            -- the handler kind: 'fulfil'; 'cancel' = 0-value self-transfer filling a nonce
    subject         TEXT,                     -- what it serves (a 'fulfil': the request id); NULL for a 'cancel'
    version         INTEGER,                  -- the subject's version it was made for (a request's generation)
    fingerprint     TEXT,                     -- the content it was made from (a request's content hash)
    sender          TEXT NOT NULL,
    nonce           INTEGER NOT NULL,
    tx_hash         TEXT NOT NULL UNIQUE,
    raw_tx          TEXT NOT NULL,            -- 0x-hex signed transaction, re-broadcastable
    to_address      TEXT NOT NULL,            -- the call, kept to re-sign it with bumped fees
    value_wei       TEXT NOT NULL,            -- decimal
    calldata        TEXT NOT NULL,            -- 0x-hex
    gas_limit       INTEGER NOT NULL,
    max_fee_per_gas TEXT,                     -- wei, decimal; NULL for legacy
    max_priority_fee_per_gas TEXT,
    gas_price       TEXT,                     -- wei, decimal; legacy only
    -- SIGNED: recorded, no node accepted it yet; BROADCAST: a node accepted it;
    -- MINED / REVERTED: its receipt (status 1 / 0); REPLACED: another tx of the same nonce
    -- superseded it; CANCELLED: superseded by a 'cancel' because its purpose became invalid;
    -- DROPPED: the nonce was consumed by a transaction this node did not sign.
    status          TEXT NOT NULL CHECK (status IN ('SIGNED','BROADCAST','MINED','REVERTED','REPLACED','DROPPED','CANCELLED')),
    replaces_tx_id  INTEGER REFERENCES txs(id),
    error           TEXT,
    created_at      REAL NOT NULL,
    broadcast_at    REAL,
    mined_block     INTEGER,
    gas_used        INTEGER,
    updated_at      REAL NOT NULL,
    mined_block_hash TEXT,                    -- the receipt's block hash (reorg check)
    held_at_head    INTEGER,                  -- reorged out: the head then; not re-sent until confirmed
    simulated_block INTEGER,                  -- the block the call was simulated at
    idempotency_key TEXT,                     -- names the intended transaction; unique
    final_at        REAL,                     -- FINAL told (block deep enough, still canonical)
    final_head      INTEGER,                  -- the chain head FINAL was judged at
    chain_id        INTEGER                   -- the chain it was signed for (migration 15); set once, then frozen
) STRICT;
CREATE INDEX IF NOT EXISTS idx_txs_open ON txs (status, nonce);
CREATE UNIQUE INDEX IF NOT EXISTS idx_txs_idempotency ON txs (idempotency_key);
CREATE INDEX IF NOT EXISTS idx_txs_subject ON txs (purpose, subject, version);
CREATE INDEX IF NOT EXISTS idx_txs_sender_nonce ON txs (sender, chain_id, nonce);
CREATE INDEX IF NOT EXISTS idx_txs_mined ON txs (sender, chain_id, mined_block) WHERE status = 'MINED';

-- One owner per sending key and chain (shared/tx/senders.py): the key's OS locks plus this
-- row, whose heartbeat names the owner for operators and other machines.
CREATE TABLE IF NOT EXISTS senders (
    address      TEXT NOT NULL,              -- checksummed sending address
    chain_id     INTEGER NOT NULL,           -- the chain it sends on (migration 15)
    owner        TEXT NOT NULL,              -- e.g. 'fulfiller'
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    acquired_at  REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    generation   INTEGER NOT NULL DEFAULT 0, -- bumped by every claim; fences the txs insert
    PRIMARY KEY (address, chain_id)
) STRICT;

-- Wallets whose private keys the node holds, encrypted with AES-256-GCM under the master key
-- in HODLAI_VAULT_KEY_FILE: a fresh random 12-byte nonce per row (UNIQUE: never reused under
-- one key); the associated data binds the address, label, owner and derivation index
-- (aad_version 2; rows of version 1 bind the address only). A created wallet's key is derived
-- from the master key and (label, owner, derivation_index), so `hodlai vault recover`
-- re-derives a lost row. No key is ever stored in clear.
CREATE TABLE IF NOT EXISTS wallets (
    address    TEXT PRIMARY KEY CHECK (length(address) = 42 AND address GLOB '0x*'), -- checksummed
    label      TEXT NOT NULL,             -- what it is for: 'mint-agent', 'distribution', ...
    owner      TEXT,                      -- whom it serves (a user); NULL for the node's own
    key_id     TEXT NOT NULL,             -- id (hash) of the master key it is encrypted under
    nonce      BLOB NOT NULL UNIQUE CHECK (length(nonce) = 12),
    ciphertext BLOB NOT NULL CHECK (length(ciphertext) = 48), -- 32-byte key + 16-byte GCM tag
    created_at REAL NOT NULL,
    derivation_index INTEGER CHECK (derivation_index >= 0), -- NULL: an imported (or pre-v2 random) key
    aad_version INTEGER NOT NULL DEFAULT 1 CHECK (aad_version IN (1, 2)) -- 1: address only; 2: address, label, owner, index
) STRICT;
-- One wallet per owner and label (the mint executor's one agent wallet per user).
CREATE UNIQUE INDEX IF NOT EXISTS idx_wallets_owner ON wallets (label, owner) WHERE owner IS NOT NULL;

-- The next derivation index of a vault wallet per (label, owner; '' for the node's own):
-- only ever raised, allocated in the transaction that inserts the wallet (shared/keys/vault.py).
CREATE TABLE IF NOT EXISTS wallet_derivations (
    label      TEXT NOT NULL,
    owner      TEXT NOT NULL,             -- '' for wallets without an owner
    next_index INTEGER NOT NULL CHECK (next_index >= 0),
    PRIMARY KEY (label, owner)
) STRICT;


-- Every EIP-3009 authorization a vault wallet signed, written in the transaction that made the
-- signature (shared/tx/authorizations). A payment's nonce is unique per (chain, token,
-- signer); a CancelAuthorization repeats the nonce of the payment it cancels (cancels_id).
-- SIGNED: could still be submitted; USED: mined (a payment moved value, a cancel cancelled);
-- EXPIRED: can never be used and was not; CANCELLED: a payment whose nonce a mined cancel took.
CREATE TABLE IF NOT EXISTS authorizations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL CHECK (kind IN ('TransferWithAuthorization','ReceiveWithAuthorization','CancelAuthorization')),
    signer         TEXT NOT NULL,             -- checksummed: the authorizer, a vault wallet
    token          TEXT NOT NULL,             -- checksummed: the EIP-712 verifyingContract
    chain_id       INTEGER NOT NULL,
    domain_name    TEXT NOT NULL,             -- name() and version() as read from the token
    domain_version TEXT NOT NULL,
    from_address   TEXT,                      -- NULL for a cancel
    to_address     TEXT,                      -- NULL for a cancel
    value          TEXT NOT NULL,             -- decimal uint256, base units; '0' for a cancel
    valid_after    INTEGER,                   -- Unix seconds; NULL for a cancel
    valid_before   INTEGER,                   -- Unix seconds; NULL for a cancel
    nonce          TEXT NOT NULL CHECK (length(nonce) = 66 AND nonce GLOB '0x*'),
    purpose        TEXT NOT NULL,             -- who signed it: 'mint-x402', ...
    subject        TEXT NOT NULL,             -- what it serves: a task id; carries the budget
    unit           TEXT NOT NULL,             -- what it pays for: a task's batch
    cancels_id     INTEGER REFERENCES authorizations(id),
    status         TEXT NOT NULL CHECK (status IN ('SIGNED','USED','EXPIRED','CANCELLED')),
    digest         TEXT NOT NULL,             -- the EIP-712 hash that was signed
    signature      TEXT NOT NULL,             -- 0x r || s || v
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    used_block     INTEGER,                   -- the block of the transaction that took the nonce
    used_tx_hash   TEXT,
    note           TEXT
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS idx_authorizations_nonce ON authorizations (chain_id, token, signer, nonce) WHERE kind <> 'CancelAuthorization';
CREATE INDEX IF NOT EXISTS idx_authorizations_unit ON authorizations (purpose, subject, unit);
CREATE INDEX IF NOT EXISTS idx_authorizations_signed ON authorizations (chain_id) WHERE status = 'SIGNED';
-- History is append-only: no row is deleted, and what was signed never changes.
CREATE TRIGGER IF NOT EXISTS trg_authorizations_no_delete BEFORE DELETE ON authorizations
BEGIN
    SELECT RAISE(ABORT, 'authorizations are append-only: a signed authorization is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_authorizations_frozen BEFORE UPDATE OF kind, signer, token, chain_id, domain_name, domain_version, from_address, to_address, value, valid_after, valid_before, nonce, purpose, subject, unit, cancels_id, digest, signature, created_at ON authorizations
BEGIN
    SELECT RAISE(ABORT, 'authorizations: what was signed never changes (signer, token, chain, kind, from, to, value, validity, nonce, signature)');
END;
INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('core.authorization', 'SIGNED', 0), ('core.authorization', 'USED', 0), ('core.authorization', 'EXPIRED', 0), ('core.authorization', 'CANCELLED', 0);
CREATE TRIGGER IF NOT EXISTS trg_core_authorization_count_insert AFTER INSERT ON authorizations
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'core.authorization' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_core_authorization_count_delete AFTER DELETE ON authorizations
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'core.authorization' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_core_authorization_count_update AFTER UPDATE OF status ON authorizations
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'core.authorization' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'core.authorization' AND status = NEW.status;
END;

-- What a (purpose, subject) may authorize in total (e.g. a task's funded amount): the values
-- of its SIGNED and USED payments plus a new one must stay within budget.
CREATE TABLE IF NOT EXISTS authorization_budgets (
    purpose    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    token      TEXT NOT NULL,                 -- checksummed
    chain_id   INTEGER NOT NULL,
    budget     TEXT NOT NULL,                 -- decimal uint256, base units
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (purpose, subject)
) STRICT;


-- Core migration 10: spend policy per sending key (shared/tx/policy.py).
-- What each recorded transaction moves, per token ('native' for the chain's own coin, else
-- the token's checksummed address), written in the same transaction as its txs row: the
-- rolling 24-hour cap is read from these rows at check time, so it holds across restarts. A
-- transaction counts from the moment it is signed, mined or not (a cancelled one may still
-- have mined); its replacements and cancels add nothing. Only amounts above zero are kept.
-- ``total`` is the running sum of the key's spends of that token up to this row, so that
-- what moved since a time is two index look-ups (the latest total minus the total just
-- before it), not a sum over every row of the day; uint256 sums do not fit SQLite's SUM.
-- ``at`` never decreases per (sender, token): a clock that steps back keeps the last time.
CREATE TABLE IF NOT EXISTS tx_spends (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id   INTEGER NOT NULL REFERENCES txs(id),
    sender  TEXT NOT NULL,                -- checksummed sending address
    token   TEXT NOT NULL,                -- 'native' or the token's checksummed address
    amount  TEXT NOT NULL CHECK (amount GLOB '[1-9]*' AND amount NOT GLOB '*[^0-9]*'), -- base units, decimal (uint256)
    total   TEXT NOT NULL CHECK (total GLOB '[1-9]*' AND total NOT GLOB '*[^0-9]*'),   -- running sum up to this row, decimal
    at      REAL NOT NULL                 -- when it was signed
) STRICT;
CREATE INDEX IF NOT EXISTS idx_tx_spends_window ON tx_spends (sender, token, at);


-- Core migration 11: final outcomes (shared/tx/settlement.py). Settled rows whose FINAL is
-- still to be told (the finality step's candidates), and recently settled rows watched for
-- reorgs, MINED and REVERTED alike.
CREATE INDEX IF NOT EXISTS idx_txs_unfinal ON txs (sender, chain_id, mined_block) WHERE final_at IS NULL AND status IN ('MINED', 'REVERTED');
CREATE INDEX IF NOT EXISTS idx_txs_settled ON txs (sender, chain_id, mined_block) WHERE status IN ('MINED', 'REVERTED');


-- Core migration 12 (sender fencing) adds one column, senders.generation, above: bumped by
-- every claim of a key, checked by the txs insert in its own transaction (shared/tx/ledger.py).


-- Core migration 13: append-only history (txs, transitions, tx_spends).
-- The ledger of what a key signed, the audit trail and the spend record are evidence: no
-- row is ever deleted, and the columns that say what was signed, and why, never change. A
-- fee bump re-reads to_address, calldata and value_wei, and a rewritten one would redirect
-- the payment. Status, errors, blocks, holds and times are still updated in place (through
-- shared/state for the status). Anyone who can write the file can drop these triggers too:
-- they stop mistakes and careless tools, the file's mode (0600) stops the others.
CREATE TRIGGER IF NOT EXISTS trg_txs_no_delete BEFORE DELETE ON txs
BEGIN
    SELECT RAISE(ABORT, 'txs is append-only: a signed transaction is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_txs_history_frozen
BEFORE UPDATE OF purpose, subject, version, fingerprint, sender, nonce, tx_hash, raw_tx, to_address, value_wei, calldata, gas_limit, max_fee_per_gas, max_priority_fee_per_gas, gas_price, replaces_tx_id, created_at, idempotency_key ON txs
WHEN OLD.purpose IS NOT NEW.purpose OR OLD.subject IS NOT NEW.subject
  OR OLD.version IS NOT NEW.version OR OLD.fingerprint IS NOT NEW.fingerprint
  OR OLD.sender IS NOT NEW.sender OR OLD.nonce IS NOT NEW.nonce
  OR OLD.tx_hash IS NOT NEW.tx_hash OR OLD.raw_tx IS NOT NEW.raw_tx
  OR OLD.to_address IS NOT NEW.to_address OR OLD.value_wei IS NOT NEW.value_wei
  OR OLD.calldata IS NOT NEW.calldata OR OLD.gas_limit IS NOT NEW.gas_limit
  OR OLD.max_fee_per_gas IS NOT NEW.max_fee_per_gas
  OR OLD.max_priority_fee_per_gas IS NOT NEW.max_priority_fee_per_gas
  OR OLD.gas_price IS NOT NEW.gas_price OR OLD.replaces_tx_id IS NOT NEW.replaces_tx_id
  OR OLD.created_at IS NOT NEW.created_at OR OLD.idempotency_key IS NOT NEW.idempotency_key
BEGIN
    SELECT RAISE(ABORT, 'txs history columns never change (what was signed, for what, when)');
END;
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_delete BEFORE DELETE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_update BEFORE UPDATE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row never changes');
END;
CREATE TRIGGER IF NOT EXISTS trg_tx_spends_no_delete BEFORE DELETE ON tx_spends
BEGIN
    SELECT RAISE(ABORT, 'tx_spends is append-only: deleting a spend would lift the daily cap');
END;
CREATE TRIGGER IF NOT EXISTS trg_tx_spends_no_update BEFORE UPDATE ON tx_spends
BEGIN
    SELECT RAISE(ABORT, 'tx_spends is append-only: a recorded spend never changes');
END;


-- Sign-in nonces of end-user proofs (shared/api/siwe.py). Each Sign-In with Ethereum proof must carry a nonce the node issued and has not seen spent:
-- issued by GET /api/auth/nonce, spent in the same transaction that accepts the proof, so a
-- signed message can be used once. Expired rows are pruned when a new nonce is issued.
CREATE TABLE IF NOT EXISTS siwe_nonces (
    nonce      TEXT PRIMARY KEY,   -- 32 hex digits from secrets.token_hex(16)
    issued_at  REAL NOT NULL,
    expires_at REAL NOT NULL,      -- issued_at + NONCE_TTL_S; expired rows are pruned
    used_at    REAL,               -- NULL until a proof spends it; then never again
    used_by    TEXT,               -- the address that proved itself with it
    used_for   TEXT                -- the statement it was spent on
) STRICT;
CREATE INDEX IF NOT EXISTS siwe_nonces_expiry ON siwe_nonces (expires_at);

-- Core migration 15 (many chains): txs.chain_id is set once (on insert, or when a database
-- that recorded no chain has its rows adopted) and never changes afterwards.
CREATE TRIGGER IF NOT EXISTS trg_txs_chain_frozen BEFORE UPDATE OF chain_id ON txs
WHEN OLD.chain_id IS NOT NULL AND OLD.chain_id IS NOT NEW.chain_id
BEGIN
    SELECT RAISE(ABORT, 'txs.chain_id never changes once set');
END;


-- ==== the oracle's tables (migration set 'oracle', workers/oracle/migrations) ====
-- Created by core migrations 1..14 on databases made before issue 19, adopted by oracle
-- migration 1 there; created by it on new ones.

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

-- The oracle's views for the sqlite3 CLI.

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


-- ==== the dispatcher's tables (migration set 'dispatch', workers/dispatch/migrations) ====


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
    updated_at     REAL NOT NULL,
    -- (dispatch migration 2) calls cut off by a dispatcher restart (not in calls), and
    -- answers after a cancel that were under way before the agent had it (not in late_results)
    cut_off        INTEGER NOT NULL DEFAULT 0,
    crossed_cancel INTEGER NOT NULL DEFAULT 0
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
    -- (dispatch migration 2) 1: the late answer arrived before the agent acknowledged the
    -- cancel (it crossed it); 0: after (the agent ignored the cancel)
    late_crossed   INTEGER NOT NULL DEFAULT 0 CHECK (late_crossed IN (0, 1)),
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



-- ==== the mint server's tables (migration set 'mint_server', workers/mint/server/migrations) ====

-- The mint server's purchases (issue 20 §2): one row per x402 payment, keyed by its payment
-- identifier and unique by (payer, EIP-3009 authorization nonce), so a payment is settled and
-- minted at most once. The status is moved only by shared.state
-- (workers/mint/server/machine.py), with its audit row in `transitions`; the settle and the
-- mint transactions are rows of `txs` (purposes 'mint_server_settle' and 'mint_server_mint',
-- subject = payment_id).
CREATE TABLE IF NOT EXISTS mint_purchases (
    payment_id       TEXT PRIMARY KEY,          -- x402 payment-identifier extension's id
    fingerprint      TEXT NOT NULL,             -- sha256 of the payment (payload, accepted, token, to)
    payer            TEXT NOT NULL,             -- checksummed `from` of the authorization
    auth_nonce       TEXT NOT NULL,             -- 0x + 64 lowercase hex
    token            TEXT NOT NULL,             -- the MintToken sold (checksummed)
    recipient        TEXT NOT NULL,             -- who gets the tokens (checksummed)
    asset            TEXT NOT NULL,             -- the USDC-like token paid with
    amount           TEXT NOT NULL,             -- paid, in the asset's base units (decimal)
    pay_to           TEXT NOT NULL,
    network          TEXT NOT NULL,             -- 'eip155:<chain id>'
    settle_call      TEXT,                      -- 0x calldata of the settle x402 asked for
    settle_tx_hash   TEXT,                      -- the settle transaction that mined (FINAL)
    mint_tx_hash     TEXT,                      -- the mint transaction that mined (FINAL)
    minted_amount    TEXT,                      -- tokens minted to recipient (decimal)
    payment_response TEXT,                      -- PAYMENT-RESPONSE header of the first answer
    body             TEXT,                      -- the JSON answer, replayed to a retry
    error            TEXT,                      -- why it was refused or failed
    check_to_block   INTEGER,                   -- SETTLE_CHECK: look for a use up to this block
    status           TEXT NOT NULL CHECK (status IN ('RECEIVED','REFUSED','SETTLE_QUEUED',
                         'SETTLING','SETTLE_CHECK','SETTLE_FAILED','MINT_QUEUED','MINTING',
                         'MINTED','MINT_FAILED')),
    lease_owner      TEXT,
    lease_until      REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    UNIQUE (payer, auth_nonce)
);
CREATE INDEX IF NOT EXISTS idx_mint_purchases_claim ON mint_purchases (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_mint_purchases_token ON mint_purchases (token, status);

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('mint.server_purchase', 'RECEIVED', 0), ('mint.server_purchase', 'REFUSED', 0), ('mint.server_purchase', 'SETTLE_QUEUED', 0), ('mint.server_purchase', 'SETTLING', 0), ('mint.server_purchase', 'SETTLE_CHECK', 0), ('mint.server_purchase', 'SETTLE_FAILED', 0), ('mint.server_purchase', 'MINT_QUEUED', 0), ('mint.server_purchase', 'MINTING', 0), ('mint.server_purchase', 'MINTED', 0), ('mint.server_purchase', 'MINT_FAILED', 0);
CREATE TRIGGER IF NOT EXISTS trg_mint_server_purchase_count_insert AFTER INSERT ON mint_purchases
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.server_purchase' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_server_purchase_count_delete AFTER DELETE ON mint_purchases
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.server_purchase' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_mint_server_purchase_count_update AFTER UPDATE OF status ON mint_purchases
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'mint.server_purchase' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'mint.server_purchase' AND status = NEW.status;
END;


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


-- ---- views for the sqlite3 CLI (recreated on every migration) ----

-- Every machine's counts.
DROP VIEW IF EXISTS v_state_counts;
CREATE VIEW v_state_counts AS
SELECT machine, status, n FROM state_counts ORDER BY machine, status;

DROP VIEW IF EXISTS v_recent_transitions;
CREATE VIEW v_recent_transitions AS
SELECT id, machine, entity_id, COALESCE(from_status, '-') || ' -> ' || to_status AS change,
       actor, strftime('%Y-%m-%d %H:%M:%f', at, 'unixepoch') AS at_utc, note
FROM transitions ORDER BY id DESC LIMIT 100;

DROP VIEW IF EXISTS v_open_txs;
CREATE VIEW v_open_txs AS
SELECT id, purpose, subject, nonce, tx_hash, status, ROUND(((julianday('now') - 2440587.5) * 86400.0) - created_at, 1) AS age_s, error
FROM txs WHERE status IN ('SIGNED', 'BROADCAST') ORDER BY nonce;
-- ==== the distribution executor's tables (migration set 'distribution', workers/distribution/migrations) ====
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

-- ---- set 'distribution' 0002: the Solana rail's sends (workers/distribution/solana) ----

-- The Solana rail's sends (workers/distribution/solana/machine.py): one row per signed
-- transaction, written with its signature and its blockhash's last valid block height in
-- the transaction that moves its transfers pending -> sent, before the bytes can reach the
-- cluster. `signed_tx` holds the signed bytes (base64; no secret in them) so the same
-- transaction can be re-sent until it lands or expires. The transfers it pays carry its
-- signature in distribution_transfers.tx_hash and .batch_id.
CREATE TABLE IF NOT EXISTS distribution_solana_sends (
    signature      TEXT PRIMARY KEY,          -- base58, the transaction's first signature
    run_id         TEXT NOT NULL,
    network        TEXT NOT NULL,             -- the Solana network: devnet, mainnet-beta…
    source         TEXT NOT NULL,             -- the paying public key
    blockhash      TEXT NOT NULL,
    last_valid_block_height INTEGER NOT NULL, -- past this (finalized) height it can never land
    blockhash_slot INTEGER NOT NULL,          -- the slot the blockhash was read at: it lands later
    signed_tx      TEXT NOT NULL,             -- the signed bytes, base64
    recipients     INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('sent','landed','failed','expired')),
    error          TEXT,                      -- failed: the decoded reason; expired: the heights
    slot           INTEGER,                   -- the slot it landed in
    broadcasts     INTEGER NOT NULL DEFAULT 0,
    last_broadcast_at REAL,
    resolved_at    REAL,
    lease_owner    TEXT,                      -- unused by the payer (it leases runs); the
    lease_until    REAL,                      -- machine contract of shared.state wants them
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS idx_distribution_solana_sends_claim ON distribution_solana_sends (status, lease_owner, created_at);
CREATE INDEX IF NOT EXISTS idx_distribution_solana_sends_lease ON distribution_solana_sends (status, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_distribution_solana_sends_run ON distribution_solana_sends (run_id, status);

INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('distribution.solana_send', 'sent', 0), ('distribution.solana_send', 'landed', 0), ('distribution.solana_send', 'failed', 0), ('distribution.solana_send', 'expired', 0);
CREATE TRIGGER IF NOT EXISTS trg_distribution_solana_send_count_insert AFTER INSERT ON distribution_solana_sends
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.solana_send' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_solana_send_count_delete AFTER DELETE ON distribution_solana_sends
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.solana_send' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_distribution_solana_send_count_update AFTER UPDATE OF status ON distribution_solana_sends
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'distribution.solana_send' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'distribution.solana_send' AND status = NEW.status;
END;
