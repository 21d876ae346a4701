-- Queue sources (`queues:`, see 0012_queues.sql and listener.ingest.queues).

-- name: queue_positions
-- placeholders: asyncpg
-- Where queue $1 stands: each part's last durable position.
SELECT part, position FROM queue_positions WHERE queue = $1

-- name: advance_queue_positions
-- placeholders: asyncpg
-- In a batch's transaction: the positions its messages reach ($1 queue, $2 part, $3 position as text:
-- '{offset}'); only ever forward.
INSERT INTO queue_positions (queue, part, position)
SELECT q, p, pos::int8[] FROM unnest($1::text[], $2::text[], $3::text[]) AS u(q, p, pos)
ON CONFLICT (queue, part) DO UPDATE SET position = excluded.position, updated_at = now()
WHERE excluded.position > queue_positions.position

-- name: park_queue_messages
-- placeholders: asyncpg
-- In a batch's transaction: the messages that could not be read, with their bytes and why; a redelivery
-- adds nothing.
INSERT INTO queue_parked (queue, part, position, topic, sent_at, reason, msg_key, headers, body)
SELECT q, p, pos::int8[], t, s, r, k, h::jsonb, b
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bytea[],
            $8::text[], $9::bytea[]) AS u(q, p, pos, t, s, r, k, h, b)
ON CONFLICT (queue, part, position) DO NOTHING

-- name: list_queue_positions
-- placeholders: none
-- `listener queues`: where every queue stands, per part, and when that last moved.
SELECT queue, part, position, updated_at FROM queue_positions ORDER BY queue, part

-- name: count_parked
-- placeholders: none
-- `listener queues`: per queue, the parked messages not yet retried (the partial index queue_parked_waiting
-- holds just those), and when the last of them was parked.
SELECT queue, count(*) AS waiting, max(parked_at) AS last_parked
FROM queue_parked WHERE retried_at IS NULL
GROUP BY queue

-- name: list_parked
-- placeholders: psycopg
-- `listener queues parked`: the parked messages of a queue (all queues: NULL), not yet retried unless
-- asked, oldest first.
SELECT queue, part, position, topic, sent_at, parked_at, length(body) AS bytes, reason, retried_at
FROM queue_parked
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(all)s OR retried_at IS NULL)
ORDER BY parked_at, queue, part, position
LIMIT %(limit)s

-- name: show_parked
-- placeholders: psycopg
-- `listener queues parked --show`: the parked message of queue %(queue)s at %(position)s, whole (in
-- part %(part)s; NULL: any part, the caller refuses when several hold that position).
SELECT queue, part, position, topic, sent_at, parked_at, length(body) AS bytes, reason, retried_at,
       msg_key, headers, body
FROM queue_parked
WHERE queue = %(queue)s AND position = %(position)s::int8[] AND (%(part)s::text IS NULL OR part = %(part)s)
ORDER BY part
LIMIT 10

-- name: count_parked_to_retry
-- placeholders: psycopg
-- `listener replay --queue`: how many parked messages of queue %(queue)s a retry reads (only the one at
-- %(part)s, %(position)s when given).
SELECT count(*) FROM queue_parked
WHERE queue = %(queue)s AND retried_at IS NULL
  AND (%(part)s::text IS NULL OR part = %(part)s)
  AND (%(position)s::int8[] IS NULL OR position = %(position)s::int8[])

-- name: parked_to_retry
-- placeholders: psycopg
-- `listener replay --queue`: the next parked messages of queue %(queue)s not yet retried, whole, in broker
-- order, after (%(after_part)s, %(after_position)s) (keyset: those still unreadable stay unretried, so an
-- offset would read them again); only the one at %(part)s, %(position)s when given.  Run through asyncpg.
SELECT part, position, topic, sent_at, msg_key, headers, body
FROM queue_parked
WHERE queue = %(queue)s AND retried_at IS NULL
  AND (%(part)s::text IS NULL OR part = %(part)s)
  AND (%(position)s::int8[] IS NULL OR position = %(position)s::int8[])
  AND (part, position) > (%(after_part)s::text, %(after_position)s::int8[])
ORDER BY part, position
LIMIT %(limit)s

-- name: retry_parked
-- placeholders: asyncpg
-- In the transaction that inserts their events: the parked messages of queue $1 read again ($2 parts, $3
-- positions as text '{offset}', $4 reasons): a NULL reason means read this time (retried now, the reason
-- it was parked kept), else it stays parked with this reason, the one it fails with now.
UPDATE queue_parked p
SET retried_at = CASE WHEN u.reason IS NULL THEN now() END, reason = coalesce(u.reason, p.reason)
FROM unnest($2::text[], $3::text[], $4::text[]) AS u(part, pos, reason)
WHERE p.queue = $1 AND p.part = u.part AND p.position = u.pos::int8[] AND p.retried_at IS NULL
