-- listener state schema, version 4: the retention window and rewinds.

-- Where the ingest checkpoint stood, and when: each row says that every source transaction whose commit
-- LSN lies below `lsn` committed at or before `commit_time` (the commit time of the transaction ending at
-- `lsn`, or the time of writing for a checkpoint that followed the server's position while idle).  Written
-- with the checkpoint, at most one row per few seconds, and only while `retain:` is configured; pruned
-- below the slot's confirmed position.  It maps a time to an LSN for `listener rewind --to-time`, gives the
-- oldest rewindable position its commit time, and is where the writer finds the position to confirm to the
-- server: the newest row older than the window.
CREATE TABLE lsn_history (
    slot_name    text NOT NULL,
    lsn          pg_lsn NOT NULL,
    commit_time  timestamptz NOT NULL,
    PRIMARY KEY (slot_name, lsn)
);

CREATE INDEX lsn_history_time ON lsn_history (slot_name, commit_time);

-- One row per `listener rewind`: re-read the source transactions committed in [from_lsn, up_to) and
-- evaluate every rule again.  Existing idempotency keys insert nothing; with `rerun_rule`, each change of
-- that rule in the range gets one run of generation `generation` (id KEY#generation), fixed here so that a
-- crash mid-rewind and the redelivery that follows never make a second one.  The ingest works through
-- unfinished rewinds oldest first; `position` is how far one got (the end LSN of the last re-read
-- transaction, committed with its events), where it resumes after a restart.  A rewind ends with
-- `finished_at` set, and `error` set when it could not run.
CREATE TABLE rewinds (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name        text NOT NULL,
    from_lsn         pg_lsn NOT NULL,
    up_to            pg_lsn NOT NULL,       -- the ingest checkpoint when it was asked for
    rerun_rule       text,
    generation       integer,
    rules            text[] NOT NULL,       -- the rules of the configuration that asked for it
    position         pg_lsn,
    events_inserted  bigint NOT NULL DEFAULT 0,
    runs_rerun       bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    error            text,
    CHECK (from_lsn < up_to),
    CHECK ((rerun_rule IS NULL) = (generation IS NULL))
);

CREATE INDEX rewinds_unfinished ON rewinds (slot_name, id) WHERE finished_at IS NULL;
