-- Core migration 14: the sign-in nonces of end-user proofs (shared/api/siwe.py).
-- Each Sign-In with Ethereum proof must carry a nonce the node issued and has not seen spent:
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
