-- listener state schema, version 12: queue sources (`queues:`; listener.ingest.queues).
--
-- Where each queue's reading stands, per part of it (a Kafka topic's partition, a Redis stream, a
-- JetStream stream): the broker position of the last message whose events are durable, committed in the
-- same transaction as them.  The broker is acknowledged only after that commit, and a restart resumes
-- after this position, not after the broker's: a message is made into events once.  `position` is the
-- broker's position as numbers that order like it: [offset] (Kafka), [milliseconds, sequence] (a Redis
-- entry id), [stream sequence] (JetStream).  It only ever moves forward.
CREATE TABLE queue_positions (
    queue       text NOT NULL,
    part        text NOT NULL,
    position    int8[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, part)
);

-- Messages that could not be read (a body that is not the queue's `format:`, one jsonb refuses), parked
-- with their raw bytes and the reason in the transaction that moves the position past them: the broker
-- is acknowledged, the stream goes on, and nothing is lost.  `listener queues parked` lists them and
-- `listener queues retry` makes their events with the current configuration (same idempotency keys).
CREATE TABLE queue_parked (
    queue       text NOT NULL,
    part        text NOT NULL,
    position    int8[] NOT NULL,
    topic       text NOT NULL,
    sent_at     timestamptz,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL,
    msg_key     bytea,
    headers     jsonb NOT NULL,
    body        bytea NOT NULL,
    retried_at  timestamptz,
    PRIMARY KEY (queue, part, position)
);

CREATE INDEX queue_parked_waiting ON queue_parked (queue, parked_at) WHERE retried_at IS NULL;
