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
