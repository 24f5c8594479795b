-- Core migration 12: sender fencing (shared/tx/senders.py). Every claim of a sending key
-- bumps its row's generation; a transaction is recorded only while the row still holds the
-- generation, host and pid of the claim that signed it, checked in the transaction of the
-- insert (shared/tx/ledger.py), so a process whose key was taken over cannot record (or
-- broadcast) one more transaction.
ALTER TABLE senders ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
