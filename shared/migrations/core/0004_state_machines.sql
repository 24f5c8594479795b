-- Core migration 4: one audit table and one count table for every declared state machine
-- (shared/state). The oracle's requests, created by core migration 1 before executors had
-- sets of their own, become the machine 'oracle.request'.

-- transitions is keyed by (machine, entity id) and records the entity's generation.
ALTER TABLE transitions RENAME COLUMN request_id TO entity_id;
ALTER TABLE transitions ADD COLUMN machine TEXT NOT NULL DEFAULT 'oracle.request';
ALTER TABLE transitions ADD COLUMN generation INTEGER;
DROP INDEX IF EXISTS idx_transitions_request;
CREATE INDEX IF NOT EXISTS idx_transitions_entity ON transitions (machine, entity_id, id);
-- Removals recorded the removed generation in their note (hodlai 0.1.0); now it is a column.
UPDATE transitions
SET generation = CAST(substr(note, instr(note, 'generation=') + 11) AS INTEGER)
WHERE to_status = 'REMOVED' AND instr(note, 'generation=') > 0;

-- Counts per (machine, status), kept exact by each machine table's triggers.
CREATE TABLE IF NOT EXISTS state_counts (
    machine TEXT NOT NULL,
    status  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (machine, status)
) STRICT;
INSERT OR IGNORE INTO state_counts (machine, status, n)
SELECT 'oracle.request', status, n FROM request_counts;
DROP TRIGGER IF EXISTS trg_requests_count_insert;
DROP TRIGGER IF EXISTS trg_requests_count_delete;
DROP TRIGGER IF EXISTS trg_requests_count_update;
DROP VIEW IF EXISTS v_status_counts;
DROP TABLE IF EXISTS request_counts;
INSERT OR IGNORE INTO state_counts (machine, status, n) VALUES ('oracle.request', 'PENDING', 0), ('oracle.request', 'ANSWERED', 0), ('oracle.request', 'PROCESSED', 0), ('oracle.request', 'FULFILLED', 0), ('oracle.request', 'FAILED', 0);
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_insert AFTER INSERT ON requests
BEGIN
    UPDATE state_counts SET n = n + 1 WHERE machine = 'oracle.request' AND status = NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_delete AFTER DELETE ON requests
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'oracle.request' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS trg_oracle_request_count_update AFTER UPDATE OF status ON requests
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE state_counts SET n = n - 1 WHERE machine = 'oracle.request' AND status = OLD.status;
    UPDATE state_counts SET n = n + 1 WHERE machine = 'oracle.request' AND status = NEW.status;
END;


DROP VIEW IF EXISTS v_status_counts;
CREATE VIEW v_status_counts AS
SELECT status, n AS requests FROM state_counts WHERE machine = 'oracle.request'
ORDER BY CASE status WHEN 'PENDING' THEN 1 WHEN 'ANSWERED' THEN 2 WHEN 'PROCESSED' THEN 3
                     WHEN 'FULFILLED' THEN 4 ELSE 5 END;

-- Every machine's counts.
DROP VIEW IF EXISTS v_state_counts;
CREATE VIEW v_state_counts AS
SELECT machine, status, n FROM state_counts ORDER BY machine, status;

DROP VIEW IF EXISTS v_recent_transitions;
CREATE VIEW v_recent_transitions AS
SELECT id, machine, entity_id, COALESCE(from_status, '-') || ' -> ' || to_status AS change,
       actor, strftime('%Y-%m-%d %H:%M:%f', at, 'unixepoch') AS at_utc, note
FROM transitions ORDER BY id DESC LIMIT 100;
