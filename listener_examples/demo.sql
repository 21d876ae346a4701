-- The tables of `listener demo` and of `docker compose up` (mounted into docker-entrypoint-initdb.d).
CREATE SCHEMA IF NOT EXISTS demo;
CREATE TABLE IF NOT EXISTS demo.users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS demo.tickets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_email text NOT NULL,
    subject text NOT NULL,
    priority text NOT NULL DEFAULT 'normal'
);
ALTER TABLE demo.tickets REPLICA IDENTITY FULL;
