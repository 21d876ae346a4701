-- Events and their runs: the ingest writer's batch insert, its compact chunks, huge payloads, wake-ups.
-- Names are unqualified: every connection's search_path is the state schema.

-- name: insert_events
-- placeholders: asyncpg
-- A batch's events in columns ($1-$5 per event: group, change LSN, ordinal, payload, run key; $6-$17 per
-- group: rule, workflow, op, table, commit LSN text (for NOTIFY what stands in for it), xid, commit time,
-- gated, key limit, ordered, priority, source: cdc, message, notify, webhook, queue or schedule), duplicates
-- skipped by the primary key, each new event with its run, the run's id the event's key (invariant 3): a
-- redelivered event makes none.  The idempotency key
-- `rule/commit LSN/ordinal` is built here (listener.rules.events.cdc_key is the same function; a test
-- holds them equal).  The ordinal goes as int8: a key, not a column, and cdc_key takes any ordinal.
-- A batch holding re-read transactions of a rewind ($18 its --rerun rule, $19 its generation, $20 the end
-- of its range; all NULL otherwise): for each change of the rerun rule committed in the range, a run of the
-- rewind's generation (id KEY#generation), whether its event is new or not.  A new event of that rule
-- therefore gets no generation-0 run: one new run per change, and a redelivery makes none.  (`listener
-- replay --webhook --rerun` uses the same for a webhook's events, which have no LSN: each is in range.)
-- The hand-off (listener.queue.handoff; $21 NULL: none): the first $21 new ungated runs of the batch are
-- made claimed already, by worker $22 for $23 seconds (attempt 1, logged in `attempts` like a claim's),
-- for that worker to start once this transaction commits; the rest are pending as usual.
-- With $24 (the workers' channel), a NOTIFY wakes them when the batch made runs to claim (not every new run
-- was handed).  With $25 (the slot), the checkpoint moves to $26 in the same statement, written by leader
-- epoch $27 (sql/0010_leaders.sql): a batch of events and its position, one statement in one transaction,
-- one round trip (StateStore.write_batch).
-- Returns (events inserted, of them in the rewind's range, rerun runs made, the positions in the batch,
-- from 1, of the events whose runs were handed).
WITH src AS (
    SELECT r[g] || '/' || c[g] || '/' || o AS key, r[g] AS rule, w[g] AS workflow, op[g] AS op, t[g] AS tbl,
           CASE WHEN src[g] IN ('cdc', 'message') THEN '0/0'::pg_lsn + l END AS lsn,
           CASE WHEN src[g] IN ('cdc', 'message') THEN c[g]::pg_lsn END AS commit_lsn,
           x[g] AS xid, ct[g] AS commit_time,
           p::jsonb AS payload, k, gated[g] AS gated, key_limit[g] AS key_limit, ordered[g] AS ordered,
           prio[g] AS priority, src[g] AS source, n
    FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::text[], $5::text[]) WITH ORDINALITY AS u(g, l, o, p, k, n),
         (SELECT $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::timestamptz[],
                 $13::bool[], $14::int4[], $15::bool[], $16::int4[], $17::text[])
             AS grp(r, w, op, t, c, x, ct, gated, key_limit, ordered, prio, src)
), ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, op, table_name, lsn, commit_lsn, xid,
                        commit_time, payload)
    SELECT key, source, rule, workflow, op, tbl, lsn, commit_lsn, xid, commit_time, payload FROM src
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key
), made AS (
    SELECT src.*,
           coalesce(NOT src.gated AND row_number() OVER (PARTITION BY src.gated ORDER BY src.n) <= $21, false)
               AS handed
    FROM src JOIN ev ON ev.idempotency_key = src.key
    WHERE $18::text IS NULL
       OR NOT coalesce(src.rule = $18::text AND src.commit_lsn < $20::text::pg_lsn, src.rule = $18::text)
), runs_made AS (
    INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, ordered, priority, status, attempt,
                      lease_owner, lease_expires, started_at)
    SELECT key, key, workflow, gated, k, key_limit, ordered, priority,
           CASE WHEN handed THEN 'running' ELSE 'pending' END, CASE WHEN handed THEN 1 ELSE 0 END,
           CASE WHEN handed THEN $22::text END, CASE WHEN handed THEN now() + make_interval(secs => $23) END,
           CASE WHEN handed THEN now() END
    FROM made
    RETURNING id, workflow, status
), logged AS (
    INSERT INTO attempts (run_id, attempt, workflow, worker)
    SELECT id, 1, workflow, $22::text FROM runs_made WHERE status = 'running'
), reruns AS (
    INSERT INTO runs (id, event_key, generation, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key || '#' || $19::int4, src.key, $19::int4, src.workflow, src.gated, src.k, src.key_limit,
           src.ordered, src.priority
    FROM src WHERE $18::text IS NOT NULL AND src.rule = $18::text
          AND coalesce(src.commit_lsn < $20::text::pg_lsn, src.commit_lsn IS NULL)
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
), checkpoint AS (
    INSERT INTO checkpoints (slot_name, lsn, updated_at, epoch)
    SELECT $25::text, $26::text::pg_lsn, now(), $27::int8 WHERE $25::text IS NOT NULL
    ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, updated_at = excluded.updated_at,
                                          epoch = excluded.epoch
)
SELECT (SELECT count(*) FROM ev) AS inserted,
       (SELECT count(*) FROM ev JOIN src ON src.key = ev.idempotency_key
        WHERE $20::text IS NOT NULL AND src.commit_lsn < $20::text::pg_lsn) AS rewound,
       (SELECT count(*) FROM reruns) AS reruns,
       (SELECT array_agg(n ORDER BY n) FROM made WHERE handed) AS handed,
       CASE WHEN $24::text IS NOT NULL
                 AND ((SELECT count(*) FROM ev) > (SELECT count(*) FROM made WHERE handed)
                      OR EXISTS (SELECT FROM reruns))
            THEN pg_notify($24::text, '') END AS woke

-- name: wake
-- placeholders: psycopg
-- A NOTIFY on a channel of the state schema (workers' wake-up, or a control request's).  It carries no
-- data (invariant 7); delivered at commit.
SELECT pg_notify(%(channel)s, '')

-- name: fill_payload
-- placeholders: asyncpg
-- A huge payload, sent in pieces into a large object ($2), replaces the event's stand-in payload ($3).
UPDATE events SET payload = convert_from(lo_get($2::oid), 'UTF8')::jsonb
WHERE idempotency_key = $1 AND payload = $3::jsonb

-- name: create_large_object
-- placeholders: none
SELECT lo_create(0)

-- name: put_large_object
-- placeholders: asyncpg
SELECT lo_put($1::oid, $2, $3)

-- name: unlink_large_object
-- placeholders: asyncpg
SELECT lo_unlink($1::oid)

-- name: insert_chunk
-- placeholders: asyncpg
-- Consecutive changes of one table in one transaction, stored compactly (see 0002_event_chunks.sql).
INSERT INTO event_chunks (commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time, table_name,
                          protocol, relation, rules, data)
VALUES ($1::text::pg_lsn, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
ON CONFLICT (commit_lsn, relation_oid, first_ordinal) DO NOTHING
RETURNING changes

-- name: next_chunk
-- placeholders: asyncpg
SELECT id, commit_lsn::text AS commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time,
       table_name, protocol, relation, rules::text AS rules, data
FROM event_chunks WHERE id > $1 ORDER BY id LIMIT 1

-- name: delete_chunk
-- placeholders: asyncpg
DELETE FROM event_chunks WHERE id = $1 RETURNING 1

-- name: runs_waiting
-- placeholders: asyncpg
-- Pending runs, counted up to $1 (the webhooks' `max_backlog`, listener.http.webhooks).
SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'pending' LIMIT $1) AS waiting

-- name: runs_ahead
-- placeholders: asyncpg
-- Pending ungated runs, counted up to $1: how far the expander is ahead of the workers.
SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'pending' AND NOT gated LIMIT $1) AS ahead
