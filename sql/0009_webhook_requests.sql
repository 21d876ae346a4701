-- listener state schema, version 9: the requests of webhooks with `keep:`.
--
-- Each verified request of such a webhook (whether a rule matched it or not), committed with its events
-- before the provider hears 200, once per delivery (a redelivery adds nothing).  `listener replay
-- --webhook` evaluates the current rules on them again; `listener run` forgets those older than `keep:`.
-- `body` is the JSON text as received (a form: as an object), so a replay's payloads are the live ones;
-- `headers` leaves out credentials (Authorization, Cookie, X-Api-Key), as the events do.
CREATE TABLE webhook_requests (
    webhook      text NOT NULL,
    delivery_id  text NOT NULL,
    received_at  timestamptz NOT NULL,
    method       text NOT NULL,
    path         text NOT NULL,
    query        jsonb NOT NULL,
    headers      jsonb NOT NULL,
    body         text NOT NULL,
    PRIMARY KEY (webhook, delivery_id)
);

CREATE INDEX webhook_requests_received ON webhook_requests (webhook, received_at);
