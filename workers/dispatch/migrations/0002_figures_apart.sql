-- Dispatch migration 2: figures an operator reads without misreading them (issue 19, item 6).
-- Calls cut off by a dispatcher restart, and answers that merely crossed our cancel, are
-- counted apart from `calls` and `late_results`.

-- Calls of this agent that a dispatcher restart cut off (outcome 'orphaned': the answer was
-- lost with the process; no verdict). Not in `calls`.
ALTER TABLE agents ADD COLUMN cut_off INTEGER NOT NULL DEFAULT 0;
-- Answers after our cancel that were already under way when the agent acknowledged it (the
-- agent could not have stopped). Not in `late_results`, which counts answers given after the
-- agent had the cancel.
ALTER TABLE agents ADD COLUMN crossed_cancel INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET cut_off = (
    SELECT COUNT(*) FROM job_distribution_agents AS w
    WHERE w.agent_id = agents.agent_id AND w.outcome = 'orphaned'
);

-- 1 when the late answer of a cancelled call arrived before the agent acknowledged the cancel
-- (it crossed the cancel on the wire); 0 when it came after (the agent ignored the cancel).
-- Rows from before this migration keep 0: their late answers stay counted as late results.
ALTER TABLE job_distribution_agents ADD COLUMN late_crossed INTEGER NOT NULL DEFAULT 0 CHECK (late_crossed IN (0, 1));
