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
