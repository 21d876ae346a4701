-- listener state schema, version 6: the change journal (`journal:`).
--
-- With `journal: {keep: 7d}`, ingest keeps every row change of the rule tables that the stream carries,
-- as the server sent it: per transaction and table, the raw pgoutput Insert/Update/Delete messages (the
-- byte layout of event_chunks.data: per change an 8-byte LSN, a 4-byte length, the message) beside the
-- table's Relation message.  A row commits in the state-db transaction of the batch holding the changes,
-- so the journal is exactly as durable as the checkpoint; a redelivered transaction makes the same rows,
-- and the primary key drops them.  `listener replay --from-time` decodes rows with the expander's code and
-- evaluates the current rules, reaching back `keep`, beyond the slot's WAL.  The running ingest deletes
-- rows older than `keep` (by commit time), in small batches.
CREATE TABLE journal (
    commit_lsn     pg_lsn NOT NULL,
    relation_oid   oid NOT NULL,
    first_ordinal  integer NOT NULL,  -- of the first change among its table's changes in the transaction
    changes        integer NOT NULL,
    xid            bigint NOT NULL,
    commit_time    timestamptz NOT NULL,
    table_name     text NOT NULL,
    protocol       integer NOT NULL,  -- pgoutput protocol version the messages were decoded with
    relation       bytea NOT NULL,    -- the Relation message describing the messages' columns
    data           bytea NOT NULL,    -- per change: 8-byte LSN, 4-byte length, the pgoutput message
    PRIMARY KEY (commit_lsn, relation_oid, first_ordinal)
);

-- Compressed with lz4 where the server has it; otherwise not compressed at all: pglz on the ingest's hot
-- path cost a third of the throughput of a bulk transaction (bench/cdc_throughput.py --journal), for half
-- the disk.  (`ALTER TABLE journal ALTER COLUMN data SET STORAGE EXTENDED` trades back; see README.)
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE journal ALTER COLUMN data SET COMPRESSION lz4;
    ELSE
        ALTER TABLE journal ALTER COLUMN data SET STORAGE EXTERNAL;
    END IF;
END $$;

-- replay selects by commit time; pruning deletes the oldest
CREATE INDEX journal_commit_time ON journal (commit_time);

-- Since when the journal holds every change the stream carried: set when an ingest with `journal:` starts
-- and none is recorded, moved up by pruning, removed when an ingest starts without `journal:` (the
-- journal has a gap from then on).  `listener replay` refuses to start before it.
CREATE TABLE journal_horizon (
    slot_name  text PRIMARY KEY,
    since      timestamptz NOT NULL
);
