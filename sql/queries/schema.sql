-- The state schema itself: migrations (listener.queue.migrations).  These name the schema explicitly
-- ({schema}, a psycopg.sql identifier): they run before it exists or is on the search path.

-- name: migrate_lock
-- placeholders: psycopg
-- Serialise concurrent `init`s on the same schema; released at commit.
SELECT pg_advisory_xact_lock(hashtext('listener.migrate.' || %s))

-- name: schema_exists
-- placeholders: psycopg
SELECT 1 FROM pg_namespace WHERE nspname = %s

-- name: create_schema
-- placeholders: none
-- identifiers: schema
CREATE SCHEMA {schema}

-- name: create_schema_migrations
-- placeholders: none
-- identifiers: schema
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())

-- name: schema_version
-- placeholders: none
-- identifiers: schema
SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations

-- name: set_search_path
-- placeholders: none
-- identifiers: schema
SET LOCAL search_path TO {schema}

-- name: record_migration
-- placeholders: psycopg
-- identifiers: schema
INSERT INTO {schema}.schema_migrations (version, name) VALUES (%s, %s)

-- name: regclass
-- placeholders: psycopg
-- The table named (a qualified, quoted name), or NULL: whether it exists.
SELECT to_regclass(%s)
