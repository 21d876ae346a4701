-- The ingest checkpoint (one row per slot) and the retention window's history of checkpoints.

-- name: checkpoint
-- placeholders: psycopg
-- identifiers: schema
SELECT lsn::text FROM {schema}.checkpoints WHERE slot_name = %s

-- name: forget_checkpoint
-- placeholders: psycopg
-- identifiers: schema
DELETE FROM {schema}.checkpoints WHERE slot_name = %s RETURNING lsn::text

-- name: read_checkpoint
-- placeholders: asyncpg
SELECT lsn::text FROM checkpoints WHERE slot_name = $1

-- name: upsert_checkpoint
-- placeholders: asyncpg
-- $3: the writer's leader epoch (sql/0010_leaders.sql: a deposed leader's write is refused).
INSERT INTO checkpoints (slot_name, lsn, updated_at, epoch) VALUES ($1, $2::text::pg_lsn, now(), $3)
ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, updated_at = excluded.updated_at, epoch = excluded.epoch

-- name: record_history
-- placeholders: asyncpg
INSERT INTO lsn_history (slot_name, lsn, commit_time) VALUES ($1, $2::text::pg_lsn, coalesce($3, now()))
ON CONFLICT (slot_name, lsn) DO NOTHING

-- name: retain_position
-- placeholders: asyncpg
-- The position the slot may confirm: the newest history row older than the window ($2 seconds of commit
-- time); when the history spans more than the size cap ($3 = the checkpoint minus the cap: rows lie below
-- it), at least the oldest row within the cap; but never past an unfinished rewind's start.  NULL while
-- neither applies: the slot keeps what it has.
SELECT CASE WHEN w IS NULL THEN NULL ELSE least(w, r) END::text
FROM (SELECT greatest(
             (SELECT max(lsn) FROM lsn_history
              WHERE slot_name = $1 AND commit_time <= now() - make_interval(secs => $2::float8)),
             (SELECT min(lsn) FROM lsn_history
              WHERE slot_name = $1 AND lsn >= $3::text::pg_lsn
                AND EXISTS (SELECT 1 FROM lsn_history WHERE slot_name = $1 AND lsn < $3::text::pg_lsn))
             ) AS w,
             (SELECT min(coalesce(position, from_lsn)) FROM rewinds
              WHERE slot_name = $1 AND finished_at IS NULL) AS r) AS x

-- name: seed_history
-- placeholders: asyncpg
-- Where the history begins when retention is switched on: the slot's confirmed position, with the time the
-- checkpoint (at or past it) was written, an upper bound of the commit times below it.
INSERT INTO lsn_history (slot_name, lsn, commit_time)
SELECT $1, $2::text::pg_lsn,
       coalesce((SELECT updated_at FROM checkpoints WHERE slot_name = $1 AND lsn >= $2::text::pg_lsn), now())
WHERE NOT EXISTS (SELECT 1 FROM lsn_history WHERE slot_name = $1 AND lsn <= $2::text::pg_lsn)
ON CONFLICT (slot_name, lsn) DO NOTHING

-- name: prune_history
-- placeholders: asyncpg
DELETE FROM lsn_history WHERE slot_name = $1 AND lsn < $2::text::pg_lsn
