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

-- name: list_parked
-- placeholders: psycopg
-- `listener queues parked`: the parked messages of a queue (all queues: NULL), not yet retried unless
-- asked, oldest first.
SELECT queue, part, position, topic, sent_at, parked_at, reason, length(body) AS bytes, retried_at
FROM queue_parked
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(all)s OR retried_at IS NULL)
ORDER BY parked_at, queue, part, position
LIMIT %(limit)s

-- name: parked_to_retry
-- placeholders: psycopg
-- `listener queues retry`: queue %(queue)s's parked messages not yet retried (or only the one at
-- %(part)s, %(position)s), oldest first, whole.
SELECT queue, part, position, topic, sent_at, msg_key, headers, body
FROM queue_parked
WHERE queue = %(queue)s AND retried_at IS NULL
  AND (%(part)s::text IS NULL OR (part = %(part)s AND position = %(position)s::int8[]))
ORDER BY parked_at, part, position
LIMIT %(limit)s

-- name: mark_retried
-- placeholders: psycopg
-- In the transaction that inserted a parked message's events: it was read this time.
UPDATE queue_parked SET retried_at = now(), reason = %(reason)s
WHERE queue = %(queue)s AND part = %(part)s AND position = %(position)s::int8[]
