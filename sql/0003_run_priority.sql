-- listener state schema, version 3: run priority (a rule's `priority:`; higher is claimed first).
ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0;

DROP INDEX runs_claimable;
CREATE INDEX runs_claimable ON runs (priority DESC, run_after, seq) WHERE status = 'pending' AND NOT gated;
DROP INDEX runs_gated;
CREATE INDEX runs_gated ON runs (priority DESC, run_after, seq) WHERE status = 'pending' AND gated;
