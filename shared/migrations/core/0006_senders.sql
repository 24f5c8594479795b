-- Core migration 6: one owner per sending key. A process signs with a key only while it holds
-- the key's OS lock on this database file and its row here (shared/tx/senders.py): the lock
-- excludes a second process on this machine, the row (with its heartbeat) names the owner
-- for operators and for processes elsewhere.
CREATE TABLE IF NOT EXISTS senders (
    address      TEXT PRIMARY KEY,           -- checksummed sending address
    owner        TEXT NOT NULL,              -- e.g. 'fulfiller'
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    acquired_at  REAL NOT NULL,
    heartbeat_at REAL NOT NULL
) STRICT;
