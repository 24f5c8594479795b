-- Core migration 16: transitions.machine has no default (issue 19). Migration 4 added the
-- column with DEFAULT 'oracle.request', the only machine then; the core names no executor,
-- so every transition names its machine (shared/state writes it on every row).
-- SQLite cannot drop a column's default in place, so the table is rebuilt: every row is
-- copied with its id (rows from before migration 4 store no machine of their own and read the
-- default: the copy writes 'oracle.request' into them), AUTOINCREMENT's high-water mark is
-- kept (no id is ever reused), and its index, migration 13's append-only triggers and the
-- view that reads it are made again. Dropping the old table does not fire its triggers.
DROP VIEW IF EXISTS v_recent_transitions;
ALTER TABLE transitions RENAME TO transitions_v15;
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_id   TEXT NOT NULL,                -- the entity's key in its machine's table
    from_status TEXT,                         -- NULL when the row is created
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,                -- 'indexer', 'inference-0/2:pid', 'fulfiller', 'operator'
    at          REAL NOT NULL,
    note        TEXT,
    machine     TEXT NOT NULL,                -- the machine's name ('oracle.request', ...)
    generation  INTEGER                       -- the entity's generation then (machines that have one)
) STRICT;
INSERT INTO transitions (id, entity_id, from_status, to_status, actor, at, note, machine, generation)
SELECT id, entity_id, from_status, to_status, actor, at, note, machine, generation FROM transitions_v15;
INSERT INTO sqlite_sequence (name, seq)
SELECT 'transitions', seq FROM sqlite_sequence
WHERE name = 'transitions_v15' AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'transitions');
UPDATE sqlite_sequence
SET seq = MAX(seq, COALESCE((SELECT s.seq FROM sqlite_sequence s WHERE s.name = 'transitions_v15'), 0))
WHERE name = 'transitions';
DROP TABLE transitions_v15;
CREATE INDEX IF NOT EXISTS idx_transitions_entity ON transitions (machine, entity_id, id);
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_delete BEFORE DELETE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_update BEFORE UPDATE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row never changes');
END;
CREATE VIEW v_recent_transitions AS
SELECT id, machine, entity_id, COALESCE(from_status, '-') || ' -> ' || to_status AS change,
       actor, strftime('%Y-%m-%d %H:%M:%f', at, 'unixepoch') AS at_utc, note
FROM transitions ORDER BY id DESC LIMIT 100;
