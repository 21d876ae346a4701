-- `listener reload` requests (rows of `reload_requests`, see 0007_reload_requests.sql).

-- name: insert_reload_request
-- placeholders: psycopg
INSERT INTO reload_requests (slot_name) VALUES (%s) RETURNING id

-- name: reload_answer
-- placeholders: psycopg
SELECT ok, answer FROM reload_requests WHERE id = %s

-- name: pending_reloads
-- placeholders: asyncpg
SELECT id FROM reload_requests WHERE slot_name = $1 AND answered_at IS NULL ORDER BY id

-- name: answer_reloads
-- placeholders: asyncpg
UPDATE reload_requests SET answered_at = now(), ok = $2, answer = $3 WHERE id = ANY($1)

-- name: forget_reloads
-- placeholders: asyncpg
-- Answers older than a day.
DELETE FROM reload_requests WHERE slot_name = $1 AND answered_at < now() - interval '1 day'
