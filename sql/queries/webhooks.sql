-- The kept requests of webhooks with `keep:` (see 0009_webhook_requests.sql and listener.http.webhooks).

-- name: insert_webhook_requests
-- placeholders: asyncpg
-- In a batch's transaction, with the events the requests made; a redelivery adds nothing.
INSERT INTO webhook_requests (webhook, delivery_id, received_at, method, path, query, headers, body)
SELECT w, d, r, m, p, q::jsonb, h::jsonb, b
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[]) AS u(w, d, r, m, p, q, h, b)
ON CONFLICT (webhook, delivery_id) DO NOTHING

-- name: prune_webhook_requests
-- placeholders: asyncpg
-- Up to $3 of webhook $1's requests received more than $2 seconds ago; how many were deleted.
WITH gone AS (
    DELETE FROM webhook_requests
    WHERE (webhook, delivery_id) IN (
        SELECT webhook, delivery_id FROM webhook_requests
        WHERE webhook = $1 AND received_at < now() - make_interval(secs => $2)
        LIMIT $3
    )
    RETURNING 1
)
SELECT count(*) FROM gone

-- name: count_webhook_requests
-- placeholders: asyncpg
-- `listener replay --webhook`: the requests of webhook $1 received in [$2, $3) ($3 NULL: up to now),
-- and when the oldest kept one was received.
SELECT count(*) AS requests, (SELECT min(received_at) FROM webhook_requests WHERE webhook = $1) AS since
FROM webhook_requests
WHERE webhook = $1 AND received_at >= $2 AND ($3::timestamptz IS NULL OR received_at < $3)

-- name: read_webhook_requests
-- placeholders: asyncpg
-- The same requests, in the order they were received.
SELECT delivery_id, received_at, method, path, query::text, headers::text, body
FROM webhook_requests
WHERE webhook = $1 AND received_at >= $2 AND ($3::timestamptz IS NULL OR received_at < $3)
ORDER BY received_at, delivery_id
