-- Runs: the workers' claims, leases, completions and failures (listener.runtime.worker), durable steps
-- (listener.runtime.workflow), and the operator's commands on runs (listener.ops.runs).

-- name: claim
-- placeholders: asyncpg
-- Claim runs for worker $2, leased for $3 seconds.  Each claim starts a new attempt (fencing the previous
-- one out, invariant 5) and is logged in `attempts`; the claimed runs come with their event and the
-- results of their steps recorded so far.  Which runs:
-- * $4 NULL: runs without flow control, $1 at most: any number of workers claim at once, skipping each
--   other's locked rows;
-- * $4 the ids of gated runs chosen under the claim lock (see Worker._claim_gated; $1 unused).
WITH free AS (
    SELECT id FROM runs
    WHERE $4::text[] IS NULL AND status = 'pending' AND NOT gated AND run_after <= now()
    ORDER BY priority DESC, run_after, seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE runs r
    SET status = 'running', attempt = r.attempt + 1, lease_owner = $2,
        lease_expires = now() + make_interval(secs => $3), started_at = coalesce(r.started_at, now())
    WHERE r.id = ANY (ARRAY(SELECT id FROM free UNION ALL SELECT unnest($4::text[])))
    RETURNING r.id, r.event_key, r.attempt, r.failures, r.seq, r.workflow, r.key
), logged AS (
    INSERT INTO attempts (run_id, attempt, workflow, worker) SELECT id, attempt, workflow, $2 FROM claimed
)
SELECT c.id, c.event_key, c.attempt, c.failures, c.key, e.rule, e.workflow, e.op, e.table_name,
       e.lsn::text AS lsn, e.commit_lsn::text AS commit_lsn, e.xid, e.commit_time, e.payload::text AS payload,
       CASE WHEN c.attempt > 1 THEN coalesce(
           (SELECT jsonb_object_agg(s.name, s.result) FROM steps s WHERE s.run_id = c.id), '{}'
       )::text ELSE '{}' END AS steps
FROM claimed c
-- one event per run, looked up by its key: a nested loop whatever the estimates (the statement is prepared,
-- and a generic plan that expects `LIMIT $1` to take a tenth of the table would join all events by hash)
CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.idempotency_key = c.event_key LIMIT 1) e
ORDER BY c.seq

-- name: claim_lock
-- placeholders: asyncpg
-- The claim lock of gated runs (their flow-control limits are checked under it).
SELECT pg_advisory_xact_lock(hashtext($1))

-- name: gated_waiting
-- placeholders: none
SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'pending' AND gated AND run_after <= now())

-- name: gated_candidates
-- placeholders: asyncpg
SELECT id, workflow, key, key_limit, ordered, seq FROM runs
WHERE status = 'pending' AND gated AND run_after <= now()
ORDER BY priority DESC, run_after, seq
LIMIT $1

-- name: gated_running
-- placeholders: none
SELECT workflow, key FROM runs WHERE status = 'running' AND gated

-- name: key_heads
-- placeholders: asyncpg
SELECT key, min(seq) FROM runs
WHERE key = ANY($1::text[]) AND gated AND status IN ('pending', 'running')
GROUP BY key

-- name: rate_used
-- placeholders: asyncpg
SELECT count(*) FROM attempts WHERE workflow = $1 AND started_at > now() - make_interval(secs => $2)

-- name: complete_runs
-- placeholders: asyncpg
-- Completion and failure are fenced: they apply only if this worker still holds this attempt.
-- Completions of many runs go in one statement (see Worker._flush_done): a round trip per batch, not per
-- run.  Returns the runs this attempt completed: now, or already (a retry after the connection dropped
-- between the commit and its reply finds its own attempt done; only a claim changes a run's attempt).
WITH d AS (SELECT * FROM unnest($1::text[], $2::int4[]) AS d(id, attempt)),
r AS (
    UPDATE runs SET status = 'done', finished_at = now(), lease_owner = NULL, lease_expires = NULL,
                    last_error = NULL, traceback = NULL
    FROM d WHERE runs.id = d.id AND runs.attempt = d.attempt AND runs.status = 'running'
    RETURNING runs.id, runs.attempt
), a AS (
    UPDATE attempts a SET finished_at = now(), outcome = 'done'
    FROM r WHERE a.run_id = r.id AND a.attempt = r.attempt
)
SELECT id FROM r
UNION ALL
-- looked up by key, one by one (written so that statistics taken while few runs were done cannot make it
-- read every run: 10 ms per completion, measured); a run completed now is not done in this snapshot
SELECT d.id FROM d
CROSS JOIN LATERAL (
    SELECT 1 FROM runs WHERE runs.id = d.id AND runs.attempt = d.attempt AND runs.status = 'done' LIMIT 1
) done

-- name: fail_run
-- placeholders: asyncpg
WITH r AS (
    UPDATE runs
    SET failures = failures + 1,
        status = CASE WHEN failures + 1 >= $3 THEN 'dead' ELSE 'pending' END,
        run_after = now() + make_interval(secs => $4),
        finished_at = CASE WHEN failures + 1 >= $3 THEN now() END,
        last_error = $5, traceback = $6, lease_owner = NULL, lease_expires = NULL
    WHERE id = $1 AND attempt = $2 AND status = 'running'
    RETURNING id, status
)
UPDATE attempts a SET finished_at = now(), outcome = CASE r.status WHEN 'dead' THEN 'dead' ELSE 'failed' END,
                      error = $5
FROM r WHERE a.run_id = r.id AND a.attempt = $2
RETURNING r.status

-- name: release_runs
-- placeholders: asyncpg
-- Released at shutdown: back to pending at once; not a failure.
WITH r AS (
    UPDATE runs SET status = 'pending', run_after = now(), lease_owner = NULL, lease_expires = NULL
    WHERE id = ANY($1::text[]) AND lease_owner = $2 AND status = 'running'
    RETURNING id, attempt
)
UPDATE attempts a SET finished_at = now(), outcome = 'released'
FROM r WHERE a.run_id = r.id AND a.attempt = r.attempt

-- name: heartbeat
-- placeholders: asyncpg
-- Skips the runs whose row a step's transaction holds (ctx.transaction() fences with FOR SHARE): waiting
-- for the slowest of those would hold every other run's row meanwhile, and with it their steps and
-- completions, and renew no lease.  A run is renewed at the next beat after its step commits.
UPDATE runs SET lease_expires = now() + make_interval(secs => $3)
WHERE id IN (
    SELECT id FROM runs WHERE id = ANY($1::text[]) AND lease_owner = $2 AND status = 'running'
    FOR NO KEY UPDATE SKIP LOCKED
)

-- name: reclaim
-- placeholders: none
-- A lease that expired belongs to a dead (or stalled) worker: its run goes back to pending; the next
-- claim increments the attempt, which fences the old worker out.  The lost attempt counts as a failure, so
-- a run that kills its worker every time (out of memory, a crash in native code) ends dead after its
-- workflow's max_attempts (checked at the next claim, see Worker._execute) instead of running for ever.
-- A run whose row a step's transaction holds is skipped: its worker is alive, inside that step (waiting
-- would stop the claims of the worker that reclaims until the step ends); it is taken once the step ends.
WITH r AS (
    UPDATE runs
    SET status = 'pending', failures = failures + 1, lease_owner = NULL, lease_expires = NULL,
        traceback = NULL,
        last_error = format('lease expired: worker %s stopped renewing attempt %s', lease_owner, attempt)
    WHERE id IN (
        SELECT id FROM runs WHERE status = 'running' AND lease_expires < now() FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING id, attempt, last_error
)
UPDATE attempts a SET finished_at = now(), outcome = 'lease expired', error = r.last_error
FROM r WHERE a.run_id = r.id AND a.attempt = r.attempt

-- name: dead_at_claim
-- placeholders: asyncpg
-- A claimed run whose earlier attempts already used up its workflow's max_attempts: dead without
-- running, keeping the last error (fenced like a failure).
WITH r AS (
    UPDATE runs SET status = 'dead', finished_at = now(), lease_owner = NULL, lease_expires = NULL
    WHERE id = $1 AND attempt = $2 AND status = 'running'
    RETURNING id, last_error
)
UPDATE attempts a SET finished_at = now(), outcome = 'dead', error = 'not run: ' || coalesce(r.last_error, '')
FROM r WHERE a.run_id = r.id AND a.attempt = $2
RETURNING r.last_error

-- name: save_step
-- placeholders: asyncpg
-- The record of a step with a ctx.transaction(), written last in that transaction and fenced there: the
-- run must still be ours (same attempt, still running).  FOR SHARE holds the run's row from here to the
-- commit, so a reclaim (which updates it) cannot slip between this check and the commit; the user's writes
-- before it commit only if it recorded the step.  No row written: fenced out, and the caller rolls back.
INSERT INTO steps (run_id, name, attempt, result, started_at)
SELECT $1, $2, $3, $4::jsonb, $5 FROM runs WHERE id = $1 AND attempt = $3 AND status = 'running' FOR SHARE

-- name: save_steps
-- placeholders: asyncpg
-- The records of steps of many runs (see Worker._send_steps), each fenced like save_step: one statement
-- and one commit.  Returns the steps recorded: now, or already by the same attempt (a retry after the
-- connection dropped between the commit and its reply).  A step missing from the answer was fenced out.
WITH s AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::timestamptz[])
        AS s(run_id, name, attempt, result, started_at)
), live AS (
    SELECT s.* FROM s JOIN runs r ON r.id = s.run_id AND r.attempt = s.attempt AND r.status = 'running'
    FOR SHARE OF r
)
INSERT INTO steps AS t (run_id, name, attempt, result, started_at)
SELECT run_id, name, attempt, result::jsonb, started_at FROM live
ON CONFLICT (run_id, name) DO UPDATE SET attempt = t.attempt WHERE t.attempt = excluded.attempt
RETURNING t.run_id, t.name

-- name: list_runs
-- placeholders: psycopg
-- Newest first.  Per finished status shown, the newest runs come from the end of runs_listed (status, seq),
-- read backwards until `limit` of them pass the filters; the unfinished runs (the backlog) through the
-- workers' indexes: runs_claimable, runs_gated, runs_leased.  The lists are then merged.  Its time does not
-- depend on how many runs the table holds (README "Retention of finished runs"); a filter on a workflow or
-- rule reads back as far as its runs lie.
WITH shown AS (
    SELECT coalesce(%(statuses)s::text[], ARRAY['pending', 'running', 'done', 'dead', 'cancelled']) AS statuses
)
SELECT r.id, r.event_key, r.generation, r.rule, r.workflow, r.status, r.attempt, r.failures,
       r.created_at, r.started_at, r.finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS duration_s,
       r.last_error
FROM (
    SELECT r.* FROM shown, unnest(shown.statuses) AS s
    CROSS JOIN LATERAL (
        SELECT r.*, e.rule FROM runs r LEFT JOIN events e ON e.idempotency_key = r.event_key
        WHERE r.status = s AND r.status IN ('done', 'dead', 'cancelled')
          AND (%(workflow)s::text IS NULL OR r.workflow = %(workflow)s::text)
          AND (%(rule)s::text IS NULL OR e.rule = %(rule)s::text)
        ORDER BY r.seq DESC
        LIMIT %(limit)s
    ) r
    WHERE s IN ('done', 'dead', 'cancelled')
    UNION ALL
    SELECT r.*, e.rule FROM shown, runs r LEFT JOIN events e ON e.idempotency_key = r.event_key
    WHERE ((r.status = 'pending' AND NOT r.gated) OR (r.status = 'pending' AND r.gated) OR r.status = 'running')
      AND r.status = ANY(shown.statuses)
      AND (%(workflow)s::text IS NULL OR r.workflow = %(workflow)s::text)
      AND (%(rule)s::text IS NULL OR e.rule = %(rule)s::text)
) r
ORDER BY r.seq DESC
LIMIT %(limit)s

-- name: show_run
-- placeholders: psycopg
SELECT r.id, r.event_key, r.generation, e.rule, r.workflow, r.status, r.attempt, r.failures,
       r.created_at, r.started_at, r.finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS duration_s,
       r.last_error, r.run_after, r.lease_owner, r.lease_expires, r.traceback
FROM runs r LEFT JOIN events e ON e.idempotency_key = r.event_key
WHERE r.id = %s

-- name: show_event
-- placeholders: psycopg
SELECT idempotency_key, source, rule, workflow, op, table_name, lsn::text AS lsn,
       commit_lsn::text AS commit_lsn, xid, commit_time, created_at, payload
FROM events WHERE idempotency_key = %s

-- name: show_steps
-- placeholders: psycopg
SELECT name, attempt, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS duration_s, result
FROM steps WHERE run_id = %s ORDER BY finished_at, name

-- name: show_attempts
-- placeholders: psycopg
SELECT attempt, worker, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS duration_s, outcome, error
FROM attempts WHERE run_id = %s ORDER BY attempt

-- name: generations
-- placeholders: psycopg
-- Every run of an event: generation 0 by its id (the key), the later ones through runs_generations.
SELECT id, generation, status FROM runs
WHERE id = %(key)s OR (event_key = %(key)s AND generation > 0)
ORDER BY generation

-- name: retry_target
-- placeholders: psycopg
SELECT event_key FROM runs WHERE id = %s

-- name: retry_lock
-- placeholders: psycopg
-- Two retries of one event at once would both compute the same next generation; the second then waits
-- here and, in its next statement (a new snapshot under READ COMMITTED), sees the first one's new run.
SELECT pg_advisory_xact_lock(hashtext('listener.retry.' || current_schema() || '.' || %s))

-- name: retry_runs
-- placeholders: psycopg
SELECT id, generation, status, attempt, lease_owner FROM runs
WHERE id = %(key)s OR (event_key = %(key)s AND generation > 0)
ORDER BY generation FOR UPDATE

-- name: run_columns
-- placeholders: none
-- The columns of `runs` as they are now (a new generation copies those that are not its own progress).
SELECT column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'runs'
  AND is_generated = 'NEVER' AND is_identity = 'NO'
ORDER BY ordinal_position

-- name: resume_run
-- placeholders: psycopg
-- `retry` without --rerun: the same run, a new attempt (the next claim increments `attempt`), its recorded
-- steps kept; failures start from zero so the workflow's retry policy applies afresh.
UPDATE runs SET status = 'pending', failures = 0, run_after = now(), finished_at = NULL,
                lease_owner = NULL, lease_expires = NULL
WHERE id = %s

-- name: insert_generation
-- placeholders: psycopg
-- identifiers: columns
-- A new generation (id, generation) of a run, copying what the run was made with ({columns}).
INSERT INTO runs (id, generation, {columns}) SELECT %s, %s, {columns} FROM runs WHERE id = %s

-- name: cancel_target
-- placeholders: psycopg
SELECT status, attempt, failures FROM runs WHERE id = %s FOR UPDATE

-- name: cancel_run
-- placeholders: psycopg
UPDATE runs SET status = 'cancelled', finished_at = now(), lease_owner = NULL, lease_expires = NULL
WHERE id = %s

-- name: cancel_attempt
-- placeholders: psycopg
-- The attempt a worker is executing ends now; the worker's own fenced write of its outcome will be refused.
UPDATE attempts SET finished_at = now(), outcome = 'cancelled'
WHERE run_id = %s AND attempt = %s AND finished_at IS NULL

-- name: count_runs
-- placeholders: psycopg
-- Runs per status, of the statuses given (`listener status`): the finished ones counted in runs_listed, the
-- pending and running ones in the workers' partial indexes.
SELECT status, count(*) FROM runs
WHERE status = ANY(%(statuses)s) AND status IN ('done', 'dead', 'cancelled')
GROUP BY status
UNION ALL
SELECT 'pending', (SELECT count(*) FROM runs WHERE status = 'pending' AND NOT gated)
                  + (SELECT count(*) FROM runs WHERE status = 'pending' AND gated)
WHERE 'pending' = ANY(%(statuses)s)
UNION ALL
SELECT 'running', count(*) FROM runs WHERE status = 'running' HAVING 'running' = ANY(%(statuses)s)

-- name: queue_gauges
-- placeholders: none
-- The unfinished runs by workflow and state, and each group's oldest creation (GET /metrics, scraped every
-- few seconds): read through the workers' partial indexes (runs_claimable, runs_gated, runs_leased), so a
-- scrape costs the same however many finished runs the table holds.  pending: claimable now; waiting: its
-- retry (or its schedule) is later.
SELECT workflow, CASE WHEN run_after > now() THEN 'waiting' ELSE 'pending' END AS state, count(*) AS runs,
       min(created_at) AS oldest
FROM (
    SELECT workflow, run_after, created_at FROM runs WHERE status = 'pending' AND NOT gated
    UNION ALL
    SELECT workflow, run_after, created_at FROM runs WHERE status = 'pending' AND gated
) unfinished
GROUP BY 1, 2
UNION ALL
SELECT workflow, 'running', count(*), min(created_at) FROM runs WHERE status = 'running' GROUP BY 1
