-- Rewinds (`listener rewind`, rows of `rewinds`, see 0004_rewind.sql), the history they plan with, and the
-- next generation of a run (invariant 3), which rewinds, replays and retries share.

-- name: next_generation
-- placeholders: psycopg
-- The generation of a new deliberate run (its id KEY#generation): one above every run of the events it
-- reruns and above the generations already fixed by rewinds of their rule, so that its ids are new.
-- * `listener rewind --rerun RULE` (range [from, up_to)) and `listener replay --rerun RULE` (from and up_to
--   NULL: any commit LSN): the runs of the rule's events in the range, and every earlier rerun of the
--   rule (finished_too true), so that a rule's reruns number upward.
-- * `listener retry --rerun RUN` (event_key given, rule NULL: the event's rule for the rewinds): the runs of that one event
--   only, and the unfinished rewinds of its rule (finished_too false): theirs have their generation fixed
--   already, so the retry picks a higher one and leaves the rewind's id free; a finished rewind's runs
--   exist, and count among the event's runs when it reran this event.
SELECT greatest(
    (SELECT coalesce(max(r.generation), 0) FROM runs r
     WHERE r.event_key = %(event_key)s::text AND r.generation > 0),
    (SELECT coalesce(max(r.generation), 0) FROM runs r JOIN events e ON e.idempotency_key = r.event_key
     WHERE e.rule = %(rule)s::text
       AND (%(from)s::text::pg_lsn IS NULL OR e.commit_lsn >= %(from)s::text::pg_lsn)
       AND (%(up_to)s::text::pg_lsn IS NULL OR e.commit_lsn < %(up_to)s::text::pg_lsn)),
    (SELECT coalesce(max(w.generation), 0) FROM rewinds w
     WHERE w.rerun_rule = coalesce(%(rule)s::text,
                                   (SELECT e.rule FROM events e WHERE e.idempotency_key = %(event_key)s::text))
       AND (%(finished_too)s::bool OR w.finished_at IS NULL))) + 1

-- name: rewind_lock
-- placeholders: psycopg
SELECT pg_advisory_xact_lock(hashtext('listener.rewind.' || current_schema() || '.' || %s))

-- name: insert_rewind
-- placeholders: psycopg
INSERT INTO rewinds (slot_name, from_lsn, up_to, rerun_rule, generation, rules)
VALUES (%s, %s::pg_lsn, %s::pg_lsn, %s, %s, %s) RETURNING id

-- name: fail_rewind
-- placeholders: psycopg
-- End a rewind that cannot run, saying why (shown by `listener status` and `rewind --wait`).
UPDATE rewinds SET finished_at = now(), error = %(error)s WHERE id = %(id)s AND finished_at IS NULL

-- name: start_rewind
-- placeholders: asyncpg
UPDATE rewinds SET started_at = coalesce(started_at, now()) WHERE id = $1

-- name: next_rewind
-- placeholders: asyncpg
-- The oldest unfinished rewind of the slot.
SELECT id, from_lsn::text AS from_lsn, up_to::text AS up_to, position::text AS position, rerun_rule,
       generation, rules
FROM rewinds WHERE slot_name = $1 AND finished_at IS NULL ORDER BY id LIMIT 1

-- name: advance_rewind
-- placeholders: asyncpg
UPDATE rewinds SET position = coalesce($2::text::pg_lsn, position),
                   events_inserted = events_inserted + $3, runs_rerun = runs_rerun + $4,
                   finished_at = CASE WHEN $5 THEN now() ELSE finished_at END
WHERE id = $1

-- name: rewinds
-- placeholders: psycopg
-- The unfinished rewinds of a slot and its last n finished ones, oldest first.
(SELECT id, from_lsn::text AS from_lsn, up_to::text AS up_to, position::text AS position, rerun_rule,
        generation, events_inserted, runs_rerun, created_at, started_at, finished_at, error
 FROM rewinds WHERE slot_name = %(slot)s AND finished_at IS NULL)
UNION ALL
(SELECT id, from_lsn::text AS from_lsn, up_to::text AS up_to, position::text AS position, rerun_rule,
        generation, events_inserted, runs_rerun, created_at, started_at, finished_at, error
 FROM rewinds WHERE slot_name = %(slot)s AND finished_at IS NOT NULL ORDER BY id DESC LIMIT %(n)s)
ORDER BY id

-- name: rewind
-- placeholders: psycopg
SELECT id, from_lsn::text AS from_lsn, up_to::text AS up_to, position::text AS position, rerun_rule,
       generation, events_inserted, runs_rerun, created_at, started_at, finished_at, error
FROM rewinds WHERE id = %s

-- name: checkpoint_written
-- placeholders: psycopg
-- The slot's checkpoint and when it was written.
SELECT lsn::text, updated_at FROM checkpoints WHERE slot_name = %s

-- name: oldest_history
-- placeholders: psycopg
-- The oldest history position the slot still keeps (at or past its confirmed position).
SELECT lsn::text, commit_time FROM lsn_history WHERE slot_name = %s AND lsn >= %s::pg_lsn
ORDER BY lsn LIMIT 1

-- name: history_before
-- placeholders: psycopg
-- The newest history position within the window whose transactions all committed before a time.
SELECT lsn::text, commit_time FROM lsn_history WHERE slot_name = %s AND commit_time < %s
  AND lsn >= %s::pg_lsn ORDER BY lsn DESC LIMIT 1

-- name: existing_events
-- placeholders: asyncpg
-- Of the keys $1 (of the rules $2), how many per rule are in the queue already (dry runs).
SELECT u.r, count(*) FROM unnest($1::text[], $2::text[]) AS u(k, r)
WHERE EXISTS (SELECT 1 FROM events WHERE idempotency_key = u.k) GROUP BY u.r
