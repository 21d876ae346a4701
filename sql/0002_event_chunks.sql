-- listener state schema, version 2: compact event storage for bulk transactions.
--
-- When one source transaction changes many rows of a table whose rules need nothing but the row (no
-- flow-control key, no predicate), ingest stores those changes as they came from the server: the raw
-- pgoutput messages, many to a row here, with the Relation message that describes them.  Such a chunk is
-- as durable as events (it commits with the checkpoint), and its events have the same idempotency keys
-- (rule + commit LSN + ordinal); an expander turns chunks into events and runs, in order, staying a bounded
-- number of runs ahead of the workers.  A chunk is deleted in the transaction that expands it; a chunk
-- written twice (a redelivered transaction) expands into nothing new, by the events' primary key.
CREATE TABLE event_chunks (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    commit_lsn     pg_lsn NOT NULL,
    relation_oid   oid NOT NULL,
    first_ordinal  integer NOT NULL,  -- of the first change among its table's changes in the transaction
    changes        integer NOT NULL,
    xid            bigint NOT NULL,
    commit_time    timestamptz NOT NULL,
    table_name     text NOT NULL,
    protocol       integer NOT NULL,  -- pgoutput protocol version the messages were decoded with
    relation       bytea NOT NULL,    -- the Relation message describing the messages' columns
    rules          jsonb NOT NULL,    -- per operation: [[rule, workflow, priority], ...] at ingest
    data           bytea NOT NULL,    -- per change: 8-byte LSN, 4-byte length, the pgoutput message
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (commit_lsn, relation_oid, first_ordinal)
);

-- Written once, read once, mostly incompressible row text: skip compression, keep it out of line.
ALTER TABLE event_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
