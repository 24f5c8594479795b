-- Core migration 10: spend policy per sending key (shared/tx/policy.py).
-- What each recorded transaction moves, per token ('native' for the chain's own coin, else
-- the token's checksummed address), written in the same transaction as its txs row: the
-- rolling 24-hour cap sums these rows at check time, so it holds across restarts. A
-- transaction counts from the moment it is signed, mined or not (a cancelled one may still
-- have mined); its replacements and cancels add nothing. Only amounts above zero are kept.
CREATE TABLE IF NOT EXISTS tx_spends (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id   INTEGER NOT NULL REFERENCES txs(id),
    sender  TEXT NOT NULL,                -- checksummed sending address
    token   TEXT NOT NULL,                -- 'native' or the token's checksummed address
    amount  TEXT NOT NULL CHECK (amount GLOB '[1-9]*' AND amount NOT GLOB '*[^0-9]*'), -- base units, decimal (uint256)
    at      REAL NOT NULL                 -- when it was signed
) STRICT;
CREATE INDEX IF NOT EXISTS idx_tx_spends_window ON tx_spends (sender, token, at);
