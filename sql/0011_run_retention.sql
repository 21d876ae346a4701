-- listener state schema, version 11: the retention of finished runs (`runs: keep:`), and `listener runs`
-- at any size.
--
-- With `runs: {keep: 30d}`, the slot's leader deletes, a batch at a time, every event whose runs are all
-- done or cancelled and finished more than `keep` ago, with those runs, their steps and their attempts
-- (listener.ingest.retention).  An event goes whole or not at all: a pruned event's key is forgotten, so
-- a redelivery of it would make a new run; the configuration refuses a `keep` shorter than the windows
-- through which listener itself can deliver an event again (README "Retention of finished runs").

-- Where the pruner finds its work, oldest first per workflow: only done and cancelled runs are in it, so
-- it never reads the pending and running runs the workers claim.  A run enters it when it finishes.
CREATE INDEX runs_finished ON runs (workflow, finished_at) WHERE status IN ('done', 'cancelled');

-- The later generations of an event (`listener retry --rerun`, `rewind --rerun`): few.  Generation 0's id
-- is the event's key, found by the primary key; with this index the runs of one event never need a scan
-- (pruning checks them all; `runs show` and `retry` list them).
CREATE INDEX runs_generations ON runs (event_key) WHERE generation > 0;

-- `listener runs`: the newest finished runs of each status, read backwards from the end of the index (the
-- command merges the statuses it shows): its time does not depend on how many runs the table holds.  The
-- unfinished runs are left out: the claim's planner, with statistics taken while few runs were done, chose
-- this index over runs_claimable and sorted every pending run (tests/integration/test_claim_plan.py); and
-- a claim and every lease renewal would have added an entry (their updates are not HOT).  `listener runs`
-- finds pending and running runs through runs_claimable, runs_gated and runs_leased.
CREATE INDEX runs_listed ON runs (status, seq) WHERE status IN ('done', 'dead', 'cancelled');

-- What the pruner did, per slot (its leader prunes), for `listener status`.
CREATE TABLE run_retention (
    slot_name    text PRIMARY KEY,
    events       bigint NOT NULL DEFAULT 0,   -- pruned since the first prune
    runs         bigint NOT NULL DEFAULT 0,
    last_pruned  timestamptz                  -- the end of the last batch that deleted something
);
