-- Schedules (`schedules:`, see 0008_schedules.sql and listener.ingest.schedules).

-- name: schedule_states
-- placeholders: asyncpg
-- The state of the named schedules: those never seen have no row.
SELECT name, last_tick, paused FROM schedules WHERE name = ANY($1::text[])

-- name: advance_schedules
-- placeholders: asyncpg
-- In a batch's transaction: the ticks done (fired, skipped or missed) with it; a row per schedule, only
-- ever moved forward (a replica behind another changes nothing).
INSERT INTO schedules (name, last_tick)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (name) DO UPDATE SET last_tick = greatest(schedules.last_tick, excluded.last_tick),
                                 updated_at = now()
WHERE excluded.last_tick > schedules.last_tick

-- name: schedule_gate
-- placeholders: asyncpg
-- Before a tick fires: whether its schedule is paused, and the unfinished runs of its other ticks
-- ($2: the runs' flow-control key, NULL when they may overlap; $3: this tick's run, which a replica may
-- have made already and which must not hold it back).  Uses runs_keyed.
SELECT coalesce((SELECT paused FROM schedules WHERE name = $1), false) AS paused,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'running') AS running
FROM runs
WHERE key = $2 AND gated AND status IN ('pending', 'running') AND id <> $3

-- name: list_schedules
-- placeholders: none
SELECT name, last_tick, paused, paused_by, paused_at FROM schedules ORDER BY name

-- name: pause_schedule
-- placeholders: psycopg
-- `listener schedules pause`: its ticks are skipped until resumed (a row is made for one never seen).
INSERT INTO schedules (name, last_tick, paused, paused_by, paused_at)
VALUES (%(name)s, now(), true, current_user, now())
ON CONFLICT (name) DO UPDATE SET paused = true, paused_by = current_user, paused_at = now(),
                                 updated_at = now()
RETURNING last_tick

-- name: resume_schedule
-- placeholders: psycopg
-- `listener schedules resume`: the ticks skipped while paused are not made up (last_tick is now).
UPDATE schedules SET paused = false, paused_by = NULL, paused_at = NULL,
                     last_tick = greatest(last_tick, now()), updated_at = now()
WHERE name = %(name)s
RETURNING last_tick

-- name: trigger_schedule
-- placeholders: psycopg
-- `listener schedules trigger`: one event and its run now, keyed by the moment asked (trigger manual).
WITH ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, commit_time, payload)
    VALUES (%(key)s, 'schedule', %(rule)s, %(workflow)s, %(tick)s, %(payload)s::jsonb)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key
)
INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, priority)
SELECT idempotency_key, idempotency_key, %(workflow)s, %(gated)s, %(run_key)s, %(key_limit)s, %(priority)s
FROM ev
RETURNING id
