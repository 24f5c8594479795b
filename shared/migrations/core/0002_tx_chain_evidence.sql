-- Core migration 2: what the transaction manager needs to judge the chain from evidence,
-- never from an absence (shared/tx/manager.py).
-- The receipt's block hash: a reorg that took a mined transaction out is seen by comparing it
-- with the chain's header at that height.
ALTER TABLE txs ADD COLUMN mined_block_hash TEXT;
-- Set when a reorg took a mined transaction out: the chain head then. A held transaction is
-- not broadcast again until its purpose confirms its subject is unchanged at a block at least
-- HODLAI_CONFIRMATIONS deep; otherwise it is cancelled.
ALTER TABLE txs ADD COLUMN held_at_head INTEGER;
-- The block the call was simulated at before signing: a later re-simulation of the same
-- purpose uses a block at least as new.
ALTER TABLE txs ADD COLUMN simulated_block INTEGER;
-- Recently mined transactions, whose blocks are checked against the chain for reorgs.
CREATE INDEX IF NOT EXISTS idx_txs_mined ON txs (sender, mined_block) WHERE status = 'MINED';
