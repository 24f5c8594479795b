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
