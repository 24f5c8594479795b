-- Core migration 9: the EIP-3009 authorizations ledger (shared/tx/authorizations).
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
-- Counts per status of the machine 'core.authorization'.
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
