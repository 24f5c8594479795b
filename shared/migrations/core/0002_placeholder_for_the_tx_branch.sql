-- Core migration 2 is another branch's (the transaction manager's chain evidence). This
-- placeholder only keeps the numbering 1, 2, 3 complete on the indexer branch: DELETE THIS FILE
-- when merging, in favour of that branch's 0002_*.sql.
SELECT 1;
