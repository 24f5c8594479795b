-- The core set's baseline: what a NEW database gets instead of core migrations 1..14, in one
-- transaction, recorded as those fourteen versions (shared/migrations: MigrationSet.baseline).
-- It is the schema those migrations leave, less the oracle's tables (requests, fulfillments,
-- their counts and views): since issue 19 those belong to the oracle's own migration set
-- (workers/oracle/migrations), so a node without the oracle has none of them. A database
-- made before then ran migrations 1..14 themselves and keeps its oracle tables and rows; the
-- oracle's migration 1 adopts them there (CREATE ... IF NOT EXISTS).
-- Frozen like a released migration: never edit it. Migrations after 14 apply on top of it
-- exactly as on an old database, so both end in the same schema (tests/test_migrations.py).

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,   -- 'chain_id', 'provider_address', 'created_at', ...
    value TEXT NOT NULL
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
    machine     TEXT NOT NULL DEFAULT 'oracle.request',  -- the machine's name
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
    number      INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL,
    parent_hash TEXT,                         -- NULL when the block is known only from its logs
    seen_at     REAL NOT NULL
) STRICT;

-- Reorgs the indexer rolled back, for 'hodlai status' and the runbook.
CREATE TABLE IF NOT EXISTS reorgs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    detected_at   REAL NOT NULL,
    at_block      INTEGER NOT NULL,           -- the first orphaned block
    depth         INTEGER NOT NULL,
    deeper_than_confirmations INTEGER NOT NULL CHECK (deeper_than_confirmations IN (0, 1)),
    note          TEXT
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
    final_head      INTEGER                   -- the chain head FINAL was judged at
) STRICT;
CREATE INDEX IF NOT EXISTS idx_txs_open ON txs (status, nonce);
CREATE UNIQUE INDEX IF NOT EXISTS idx_txs_idempotency ON txs (idempotency_key);
CREATE INDEX IF NOT EXISTS idx_txs_subject ON txs (purpose, subject, version);
CREATE INDEX IF NOT EXISTS idx_txs_sender_nonce ON txs (sender, nonce);
CREATE INDEX IF NOT EXISTS idx_txs_mined ON txs (sender, mined_block) WHERE status = 'MINED';

-- One owner per sending key (shared/tx/senders.py): the key's OS lock on this file plus this
-- row, whose heartbeat names the owner for operators and other machines.
CREATE TABLE IF NOT EXISTS senders (
    address      TEXT PRIMARY KEY,           -- checksummed sending address
    owner        TEXT NOT NULL,              -- e.g. 'fulfiller'
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    acquired_at  REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0     -- bumped by every claim; fences the txs insert (migration 12)
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
CREATE INDEX IF NOT EXISTS idx_txs_unfinal ON txs (sender, mined_block) WHERE final_at IS NULL AND status IN ('MINED', 'REVERTED');
CREATE INDEX IF NOT EXISTS idx_txs_settled ON txs (sender, mined_block) WHERE status IN ('MINED', 'REVERTED');


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

-- ---- views for the sqlite3 CLI ----

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
