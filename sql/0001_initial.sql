-- listener state schema, version 1: events, runs, steps, and the ingest checkpoint.
-- Runs with search_path set to the state schema (default "listener"); names are unqualified on purpose.

-- Where ingest stands, per replication slot: the end LSN of the last source transaction whose events are
-- committed here.  Written in the same transaction as those events; the flush LSN reported to the server
-- never passes it.  Kept apart from the slot's confirmed_flush_lsn, which may later trail it (rewind).
CREATE TABLE checkpoints (
    slot_name   text PRIMARY KEY,
    lsn         pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What happened: one immutable row per workflow event.  The key is a pure function of the source (for
-- CDC: rule + commit LSN + ordinal of the change among its table's changes in the transaction), so a
-- redelivered change inserts nothing.
CREATE TABLE events (
    idempotency_key  text PRIMARY KEY,
    seq          bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order (no index: never searched)
    source       text NOT NULL,
    rule         text NOT NULL,
    workflow     text NOT NULL,
    op           text,
    table_name   text,
    lsn          pg_lsn,
    commit_lsn   pg_lsn,
    xid          bigint,
    commit_time  timestamptz,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- What is done about it: one run per event (generation 0, created with the event), more only on purpose
-- (`listener retry`: generation 1, 2, ...).  A run's id derives from its event's key: the key itself for
-- generation 0, "key#N" for generation N; so the primary key also makes (event, generation) unique.
-- attempt is the fencing token: every claim increments it, and every write of a worker names the attempt
-- it holds, so a worker whose lease expired can never overwrite a newer attempt.
CREATE TABLE runs (
    id             text PRIMARY KEY,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    event_key      text NOT NULL,
    generation     integer NOT NULL DEFAULT 0,
    workflow       text NOT NULL,
    -- flow control: gated runs are claimed under a lock that enforces the limits of their workflow
    -- (concurrency, rate) and of their key (concurrency per key, commit order per key)
    gated          boolean NOT NULL DEFAULT false,
    key            text,
    key_limit      integer,
    ordered        boolean NOT NULL DEFAULT false,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'running', 'done', 'dead', 'cancelled')),
    attempt        integer NOT NULL DEFAULT 0,
    failures       integer NOT NULL DEFAULT 0,
    run_after      timestamptz NOT NULL DEFAULT now(),
    lease_owner    text,
    lease_expires  timestamptz,
    last_error     text,
    traceback      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);

CREATE INDEX runs_claimable ON runs (run_after, seq) WHERE status = 'pending' AND NOT gated;
CREATE INDEX runs_gated ON runs (run_after, seq) WHERE status = 'pending' AND gated;
CREATE INDEX runs_keyed ON runs (key, seq) WHERE status IN ('pending', 'running') AND gated;
CREATE INDEX runs_leased ON runs (lease_expires) WHERE status = 'running';

-- Memoized steps: a step's result is committed before the step counts as done; a retried or resumed run
-- returns it instead of calling the step again.
CREATE TABLE steps (
    run_id       text NOT NULL,
    name         text NOT NULL,
    attempt      integer NOT NULL,
    result       jsonb,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);

-- Every attempt of a run, for `listener runs show`: when it started and ended, and how.
CREATE TABLE attempts (
    run_id       text NOT NULL,
    attempt      integer NOT NULL,
    workflow     text NOT NULL,
    worker       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text,
    error        text,
    PRIMARY KEY (run_id, attempt)
);

-- rate limits count the starts of a workflow in the last period
CREATE INDEX attempts_starts ON attempts (workflow, started_at);
