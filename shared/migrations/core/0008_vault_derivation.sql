-- Core migration 8: deterministic vault wallets (shared/keys/vault.py). A created wallet's key
-- is derived (HKDF-SHA256) from the master key and (label, owner, derivation index), so a
-- lost row is re-derived from the master key alone (`hodlai vault recover`). Imported keys
-- have no index (NULL): they stay as they were, and are not claimed recoverable.
ALTER TABLE wallets ADD COLUMN derivation_index INTEGER CHECK (derivation_index >= 0);
-- What the AES-GCM associated data binds: 1 = the address only (rows written before this
-- migration, still opened that way); 2 = a version byte, address, label, owner and index, so
-- moving a row's owner or label to another row makes it fail to decrypt.
ALTER TABLE wallets ADD COLUMN aad_version INTEGER NOT NULL DEFAULT 1 CHECK (aad_version IN (1, 2));
-- The next derivation index per (label, owner; '' for the node's own wallets): only ever
-- raised, allocated in the transaction that inserts the wallet, so an index is never handed
-- out twice while this row lives, and an owner's first wallet of a label has index 0.
CREATE TABLE IF NOT EXISTS wallet_derivations (
    label      TEXT NOT NULL,
    owner      TEXT NOT NULL,             -- '' for wallets without an owner
    next_index INTEGER NOT NULL CHECK (next_index >= 0),
    PRIMARY KEY (label, owner)
) STRICT;
