-- The change journal (`journal:`, rows of `journal` and `journal_horizon`, see 0006_journal.sql).

-- name: insert_journal
-- placeholders: asyncpg
-- One statement for all journal rows of a batch; a redelivered transaction's rows are dropped by the key.
INSERT INTO journal (commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time, table_name,
                     protocol, relation, data)
SELECT c::pg_lsn, o, f, n, x, t, tbl, p, r, d
FROM unnest($1::text[], $2::oid[], $3::int4[], $4::int4[], $5::int8[], $6::timestamptz[], $7::text[],
            $8::int4[], $9::bytea[], $10::bytea[]) AS u(c, o, f, n, x, t, tbl, p, r, d)
ON CONFLICT (commit_lsn, relation_oid, first_ordinal) DO NOTHING

-- name: prune_journal
-- placeholders: asyncpg
-- The oldest journal rows, a batch at a time ($1: the cutoff, $2: the batch).
DELETE FROM journal WHERE (commit_lsn, relation_oid, first_ordinal) IN (
    SELECT commit_lsn, relation_oid, first_ordinal FROM journal WHERE commit_time < $1 LIMIT $2)

-- name: start_journal_horizon
-- placeholders: asyncpg
INSERT INTO journal_horizon (slot_name, since) VALUES ($1, now()) ON CONFLICT DO NOTHING

-- name: drop_journal_horizon
-- placeholders: asyncpg
DELETE FROM journal_horizon WHERE slot_name = $1

-- name: advance_journal_horizon
-- placeholders: asyncpg
-- Move the horizon up to $2 seconds ago; returns that time (no row: the journal was switched off).
UPDATE journal_horizon SET since = greatest(since, now() - make_interval(secs => $2::float8))
WHERE slot_name = $1 RETURNING now() - make_interval(secs => $2::float8)

-- name: journal_horizon
-- placeholders: psycopg
SELECT since FROM journal_horizon WHERE slot_name = %s

-- name: count_journal
-- placeholders: asyncpg
-- Journal rows (and their changes) committed in [$1, $2) (no end when NULL) of the tables $3.
SELECT count(*), coalesce(sum(changes), 0)::int8 FROM journal
WHERE commit_time >= $1 AND ($2::timestamptz IS NULL OR commit_time < $2) AND table_name = ANY($3::text[])

-- name: read_journal
-- placeholders: asyncpg
SELECT commit_lsn::text AS commit_lsn, xid, commit_time, protocol, relation, first_ordinal, changes, data
FROM journal
WHERE commit_time >= $1 AND ($2::timestamptz IS NULL OR commit_time < $2) AND table_name = ANY($3::text[])
ORDER BY commit_lsn, relation_oid, first_ordinal

-- name: journal_summary
-- placeholders: psycopg
-- For `listener status`: since when the journal is complete, its oldest row, its size on disk.
SELECT (SELECT since FROM journal_horizon WHERE slot_name = %s),
       (SELECT min(commit_time) FROM journal), pg_total_relation_size('journal')
