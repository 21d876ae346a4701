-- The retention of finished runs (`runs: keep:`; sql/0011_run_retention.sql, listener.ingest.retention).

-- name: finished_workflows
-- placeholders: none
-- The workflows that have done or cancelled runs, one index probe each (a skip scan of runs_finished):
-- runs of a workflow no rule names any more are pruned too, by the default `keep`.
WITH RECURSIVE w AS (
    (SELECT workflow FROM runs WHERE status IN ('done', 'cancelled') ORDER BY workflow LIMIT 1)
    UNION ALL
    SELECT (SELECT r.workflow FROM runs r
            WHERE r.status IN ('done', 'cancelled') AND r.workflow > w.workflow
            ORDER BY r.workflow LIMIT 1)
    FROM w WHERE w.workflow IS NOT NULL
)
SELECT workflow FROM w WHERE workflow IS NOT NULL

-- name: prunable_runs
-- placeholders: asyncpg
-- Up to $3 done or cancelled runs of workflow $1 that finished more than $2 seconds ago, oldest first,
-- after ($4, $5) (finished_at, id) of the last batch, so a batch whose events must stay is passed over and
-- not read again.  Locked until the transaction ends, skipping the rows another transaction holds (a
-- `listener retry` of the event, a second pruner while replicas change leader).
SELECT id, event_key, finished_at FROM runs
WHERE workflow = $1 AND status IN ('done', 'cancelled') AND finished_at < now() - make_interval(secs => $2)
  AND finished_at >= $4 AND (finished_at, id) > ($4, $5)
ORDER BY finished_at, id
LIMIT $3
FOR UPDATE SKIP LOCKED

-- name: prune_events
-- placeholders: asyncpg
-- The events $1 whose every run (generation 0: id = the key; later ones: runs_generations) is done or
-- cancelled and finished more than $2 seconds ago, deleted with those runs, their steps and attempts; an
-- event with a run still pending, running, dead or recent stays whole.  Run in the transaction that locked
-- the candidates (prunable_runs), as a new statement: a retry that committed a new generation before the
-- lock is seen here, and one after it waited for this transaction.  Counted in run_retention for slot $3.
-- Returns (events, runs) deleted.
WITH ev AS (
    SELECT DISTINCT k AS key FROM unnest($1::text[]) AS k
    WHERE NOT EXISTS (
        SELECT 1 FROM runs r WHERE r.id = k
          AND NOT (r.status IN ('done', 'cancelled') AND r.finished_at < now() - make_interval(secs => $2))
    ) AND NOT EXISTS (
        SELECT 1 FROM runs r WHERE r.event_key = k AND r.generation > 0
          AND NOT (r.status IN ('done', 'cancelled') AND r.finished_at < now() - make_interval(secs => $2))
    )
), doomed AS (
    SELECT r.id FROM runs r JOIN ev ON r.id = ev.key
    UNION ALL
    SELECT r.id FROM runs r JOIN ev ON r.event_key = ev.key AND r.generation > 0
), gone_runs AS (
    DELETE FROM runs WHERE id IN (SELECT id FROM doomed) RETURNING id
), gone_steps AS (
    DELETE FROM steps WHERE run_id IN (SELECT id FROM doomed)
), gone_attempts AS (
    DELETE FROM attempts WHERE run_id IN (SELECT id FROM doomed)
), gone_events AS (
    DELETE FROM events WHERE idempotency_key IN (SELECT key FROM ev) RETURNING 1
), counted AS (
    INSERT INTO run_retention AS t (slot_name, events, runs, last_pruned)
    SELECT $3, (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_runs), now()
    WHERE EXISTS (SELECT FROM gone_runs)
    ON CONFLICT (slot_name) DO UPDATE SET events = t.events + excluded.events, runs = t.runs + excluded.runs,
                                          last_pruned = excluded.last_pruned
)
SELECT (SELECT count(*) FROM gone_events) AS events, (SELECT count(*) FROM gone_runs) AS runs

-- name: retention_summary
-- placeholders: psycopg
-- For `listener status`: what the pruner of a slot deleted so far, and when it last did.
SELECT events, runs, last_pruned FROM run_retention WHERE slot_name = %s

-- name: oldest_finished
-- placeholders: psycopg
-- For `listener status`: when the oldest done or cancelled run of a workflow (finished_workflows) finished.
SELECT min(finished_at) FROM runs WHERE status IN ('done', 'cancelled') AND workflow = %s
