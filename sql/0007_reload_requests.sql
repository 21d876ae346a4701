-- listener state schema, version 7: reload requests.
--
-- One row per `listener reload`: the running `listener run` of the slot re-reads its config file and
-- answers in the row (`ok`, and `answer`: the LSN from which the new rules apply, or why the file was
-- refused).  Requests are rows so that asking takes a privilege on the state schema; a NOTIFY on
-- `<schema>_reload` only wakes the service, which reloads only for an unanswered row here (or SIGHUP), at
-- most once a second: the requests waiting meanwhile share the next reload and its answer.  Answered
-- rows are deleted after a day.
CREATE TABLE reload_requests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name     text NOT NULL,
    requested_by  text NOT NULL DEFAULT current_user,
    created_at    timestamptz NOT NULL DEFAULT now(),
    answered_at   timestamptz,
    ok            boolean,
    answer        text,
    CHECK ((answered_at IS NULL) = (ok IS NULL))
);

CREATE INDEX reload_requests_pending ON reload_requests (slot_name, id) WHERE answered_at IS NULL;
