-- listener state schema, version 5: snapshot backfills.
--
-- One row per `listener backfill --rule R [--where SQL]` (or per rule with `snapshot: true`, once): read
-- the rule's table in primary-key order, a chunk at a time, while the live stream goes on.  The running
-- ingest carries it out.  Around each chunk it writes two non-transactional logical decoding messages
-- (`listener.backfill`, low and high watermarks) through the slot; a chunk row whose key a live change
-- touched between them is dropped (the live change delivered a state at least as new).  `last_key` is the
-- primary key of the last row read (as PostgreSQL text, one element per key column), committed in the
-- same state-db transaction as that chunk's events or raw rows: a crash resumes after it.
CREATE TABLE backfills (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name     text NOT NULL,
    rule          text NOT NULL,
    table_name    text NOT NULL,
    where_sql     text,                  -- the --where expression, as deparsed by PostgreSQL's parser
    key_columns   text[] NOT NULL,       -- the table's primary key, in index order
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    snapshot      boolean NOT NULL DEFAULT false,   -- started by the rule's `snapshot: true`
    last_key      text[],
    chunks        integer NOT NULL DEFAULT 0,
    rows_read     bigint NOT NULL DEFAULT 0,
    rows_dropped  bigint NOT NULL DEFAULT 0,        -- superseded by a live change in their chunk's window
    rows_total    bigint,                            -- the planner's estimate when it was asked for
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

CREATE INDEX backfills_open ON backfills (slot_name, id) WHERE status IN ('pending', 'running');
-- `snapshot: true` starts one backfill per rule, ever
CREATE UNIQUE INDEX backfills_snapshot ON backfills (slot_name, rule) WHERE snapshot;

-- The rows of a chunk whose rule needs nothing from the row at ingest (no `when:`, `payload:` or
-- flow-control key), kept as COPY ... TO STDOUT sent them (text format, one line per row), to be turned
-- into events and runs by the expander, like event_chunks.  Deleted in the transaction that expands it.
CREATE TABLE backfill_chunks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    backfill_id   bigint NOT NULL,
    seq           integer NOT NULL,     -- the chunk's number within its backfill
    rule          text NOT NULL,
    workflow      text NOT NULL,
    priority      integer NOT NULL,
    table_name    text NOT NULL,
    columns       jsonb NOT NULL,       -- [[name, type OID], ...]: the COPY lines' columns
    key_columns   integer[] NOT NULL,   -- positions (0-based) of the primary key columns
    lsn           pg_lsn NOT NULL,      -- the chunk's high watermark
    read_at       timestamptz NOT NULL,
    rows          integer NOT NULL,
    data          bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (backfill_id, seq)
);

ALTER TABLE backfill_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
