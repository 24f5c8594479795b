-- Core migration 7: the key vault's wallets
-- (shared/keys/vault.py).
-- Wallets whose private keys the node holds, encrypted with AES-256-GCM under the master key
-- in HODLAI_VAULT_KEY_FILE: a fresh random 12-byte nonce per row (UNIQUE: never reused under
-- one key), the address's 20 bytes as associated data. No key is ever stored in clear.
CREATE TABLE IF NOT EXISTS wallets (
    address    TEXT PRIMARY KEY CHECK (length(address) = 42 AND address GLOB '0x*'), -- checksummed
    label      TEXT NOT NULL,             -- what it is for: 'mint-agent', 'distribution', ...
    owner      TEXT,                      -- whom it serves (a user); NULL for the node's own
    key_id     TEXT NOT NULL,             -- id (hash) of the master key it is encrypted under
    nonce      BLOB NOT NULL UNIQUE CHECK (length(nonce) = 12),
    ciphertext BLOB NOT NULL CHECK (length(ciphertext) = 48), -- 32-byte key + 16-byte GCM tag
    created_at REAL NOT NULL
) STRICT;
-- One wallet per owner and label (the mint executor's one agent wallet per user).
CREATE UNIQUE INDEX IF NOT EXISTS idx_wallets_owner ON wallets (label, owner) WHERE owner IS NOT NULL;
