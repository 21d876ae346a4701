-- listener state schema, version 8: schedules.
--
-- One row per schedule name (`schedules:`), shared by every `listener run` of this state schema (replicas
-- fire the same ticks; their events' keys make one run of each).  `last_tick`: the ticks up to it are
-- done -- fired, skipped (overlap, pause) or missed -- so a restart makes up only the later ones (within
-- `catchup:`).  It moves in the same transaction as the tick's event, and only forward.  The row is
-- made when a schedule is first seen, with the time it was first seen: ticks before that were never due.
CREATE TABLE schedules (
    name        text PRIMARY KEY,
    last_tick   timestamptz NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    paused_by   text,
    paused_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
