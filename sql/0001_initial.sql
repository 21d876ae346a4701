-- listener state schema, version 1: the durable event queue and the ingest checkpoint.
-- Runs with search_path set to the state schema (default "listener"); names are unqualified on purpose.

-- Where ingest stands, per replication slot: the end LSN of the last source transaction whose events are
-- committed here.  Written in the same transaction as those events; the flush LSN reported to the server
-- never passes it.  Kept apart from the slot's confirmed_flush_lsn, which may later trail it (rewind).
CREATE TABLE checkpoints (
    slot_name   text PRIMARY KEY,
    lsn         pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per workflow event.  idempotency_key is a pure function of the source (for CDC:
-- rule + commit LSN + ordinal of the change among its table's changes in the transaction), so a
-- redelivered change inserts nothing.
CREATE TABLE events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    source           text NOT NULL,
    rule             text NOT NULL,
    workflow         text NOT NULL,
    op               text,
    table_name       text,
    lsn              pg_lsn,
    commit_lsn       pg_lsn,
    xid              bigint,
    commit_time      timestamptz,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    run_after        timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    locked_at        timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

CREATE INDEX events_claimable ON events (run_after, id) WHERE status = 'pending';
CREATE INDEX events_running ON events (locked_at) WHERE status = 'running';
