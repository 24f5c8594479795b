-- Core migration 11: final outcomes (shared/tx/settlement.py). A purpose is told FINAL once
-- its transaction's block is HODLAI_CONFIRMATIONS deep and its hash still canonical; these
-- columns are set in the database transaction that tells it, so a restarted manager never
-- tells FINAL twice and never forgets to tell it. A reorg that reopens the row clears them.
ALTER TABLE txs ADD COLUMN final_at REAL;
ALTER TABLE txs ADD COLUMN final_head INTEGER;
-- Rows settled before FINAL existed: their purposes took MINED / REVERTED as the last word,
-- so they count as final from the upgrade on (no purpose is told FINAL about history).
UPDATE txs SET final_at = updated_at WHERE status IN ('MINED', 'REVERTED');
-- Settled rows whose FINAL is still to be told: the finality step's candidates, few at a time.
CREATE INDEX IF NOT EXISTS idx_txs_unfinal ON txs (sender, mined_block) WHERE final_at IS NULL AND status IN ('MINED', 'REVERTED');
-- Recently settled rows (MINED and REVERTED alike), whose blocks are watched for reorgs.
CREATE INDEX IF NOT EXISTS idx_txs_settled ON txs (sender, mined_block) WHERE status IN ('MINED', 'REVERTED');
