-- listener state schema, version 5: reserved for the snapshot backfill branch (sql/0005_backfill.sql).
-- Only here so that this branch's migrations have no gap; delete this file when merging that branch.
SELECT 1;
