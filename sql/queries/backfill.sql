-- Backfills (`listener backfill`, rows of `backfills` and `backfill_chunks`, see 0005_backfill.sql).

-- name: insert_keyed_events
-- placeholders: psycopg
-- Events whose keys the caller made (a backfill's: listener.rules.events.backfill_key), each with its run,
-- the run's id the event's key (invariant 3); duplicates skipped: a redelivered event makes none.  keys,
-- payloads and run_keys are arrays, one element per event; the rest is the same for all.  Returns the
-- events (and runs) inserted.  (The tests enqueue their events with it too.)
WITH src AS (
    SELECT k AS key, p::jsonb AS payload, rk
    FROM unnest(%(keys)s::text[], %(payloads)s::text[], %(run_keys)s::text[]) AS u(k, p, rk)
), ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, op, table_name, lsn, commit_time, payload)
    SELECT key, %(source)s::text, %(rule)s::text, %(workflow)s::text, %(op)s::text, %(table_name)s::text,
           %(lsn)s::text::pg_lsn, %(commit_time)s::timestamptz, payload
    FROM src
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key
), runs_made AS (
    INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key, src.key, %(workflow)s::text, %(gated)s::bool, src.rk, %(key_limit)s::int4,
           %(ordered)s::bool, %(priority)s::int4
    FROM src JOIN ev ON ev.idempotency_key = src.key
    RETURNING 1
)
SELECT count(*) FROM runs_made

-- name: insert_backfill_chunk
-- placeholders: asyncpg
INSERT INTO backfill_chunks (backfill_id, seq, rule, workflow, priority, table_name, columns, key_columns,
                             lsn, read_at, rows, data)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9::text::pg_lsn, $10, $11, $12)
ON CONFLICT (backfill_id, seq) DO NOTHING
RETURNING rows

-- name: advance_backfill
-- placeholders: asyncpg
-- A chunk's progress; `chunks < seq` makes a chunk committed twice count once.  A cancelled backfill keeps
-- its status (chunks in flight when it was cancelled still commit).
UPDATE backfills SET last_key = $2, chunks = $3, rows_read = rows_read + $4, rows_dropped = rows_dropped + $5,
       status = CASE WHEN status IN ('pending', 'running') THEN CASE WHEN $6 THEN 'done' ELSE 'running' END
                     ELSE status END,
       finished_at = CASE WHEN $6 THEN coalesce(finished_at, now()) ELSE finished_at END,
       updated_at = now()
WHERE id = $1 AND chunks < $3

-- name: next_backfill_chunk
-- placeholders: none
SELECT id, backfill_id, seq, rule, workflow, priority, table_name, columns::text AS columns, key_columns,
       lsn::text AS lsn, read_at, rows, data
FROM backfill_chunks ORDER BY id LIMIT 1

-- name: delete_backfill_chunk
-- placeholders: asyncpg
DELETE FROM backfill_chunks WHERE id = $1 RETURNING 1

-- name: snapshot_recorded
-- placeholders: asyncpg
SELECT 1 FROM backfills WHERE slot_name = $1 AND rule = $2 AND snapshot

-- name: record_snapshot
-- placeholders: asyncpg
-- A rule's initial snapshot (`snapshot: true`): one backfill, the first time this slot's ingest sees it.
INSERT INTO backfills (slot_name, rule, table_name, key_columns, snapshot)
VALUES ($1, $2, $3, $4, true) ON CONFLICT (slot_name, rule) WHERE snapshot DO NOTHING

-- name: next_backfill
-- placeholders: asyncpg
SELECT id, rule, table_name, where_sql, last_key, chunks FROM backfills
WHERE slot_name = $1 AND status IN ('pending', 'running') ORDER BY id LIMIT 1

-- name: fail_backfill
-- placeholders: asyncpg
UPDATE backfills SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('pending', 'running')

-- name: backfill_status
-- placeholders: asyncpg
SELECT status FROM backfills WHERE id = $1

-- name: start_backfill
-- placeholders: asyncpg
UPDATE backfills SET status = 'running', started_at = coalesce(started_at, now()), updated_at = now()
WHERE id = $1 AND status = 'pending'

-- name: insert_backfill
-- placeholders: psycopg
INSERT INTO backfills (slot_name, rule, table_name, where_sql, key_columns, rows_total, snapshot)
VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id

-- name: backfills
-- placeholders: psycopg
-- The open backfills of a slot and the newest finished ones, oldest first.
SELECT * FROM (
    SELECT b.id, b.rule, b.table_name, b.where_sql, b.status, b.snapshot, b.last_key, b.chunks, b.rows_read,
           b.rows_dropped, b.rows_total, b.error, b.created_at, b.started_at, b.updated_at, b.finished_at,
           coalesce((SELECT sum(c.rows) FROM backfill_chunks c WHERE c.backfill_id = b.id), 0)::int8
               AS rows_unexpanded
    FROM backfills b WHERE b.slot_name = %s
    ORDER BY b.status IN ('pending', 'running') DESC, b.id DESC LIMIT %s) x
ORDER BY id

-- name: backfill
-- placeholders: psycopg
SELECT b.id, b.rule, b.table_name, b.where_sql, b.status, b.snapshot, b.last_key, b.chunks, b.rows_read,
       b.rows_dropped, b.rows_total, b.error, b.created_at, b.started_at, b.updated_at, b.finished_at,
       coalesce((SELECT sum(c.rows) FROM backfill_chunks c WHERE c.backfill_id = b.id), 0)::int8
           AS rows_unexpanded
FROM backfills b WHERE b.id = %s

-- name: cancel_backfill
-- placeholders: psycopg
UPDATE backfills SET status = 'cancelled', finished_at = now(), updated_at = now()
WHERE id = %s AND status IN ('pending', 'running')
