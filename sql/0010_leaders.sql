-- listener state schema, version 10: the slot's leader among replicas, and the fence on its checkpoint.
--
-- Any number of `listener run` replicas may serve one slot; one streams it, elected by a session-level
-- advisory lock keyed on the state schema and the slot (listener.ingest.leadership).  On election the
-- replica takes the next `epoch` of the slot's row here, and every checkpoint it writes carries it.  A
-- checkpoint write whose epoch is not the current one is refused (SQLSTATE LF001), and with it the
-- events of its transaction: a deposed leader -- one whose lock connection died while it still streamed
-- -- can never move the checkpoint again.  The election's UPDATE of the row waits for a checkpoint write
-- under way (it holds the row FOR SHARE), so a write either committed before the new epoch or is refused.
-- A checkpoint written without an epoch (by hand) is not fenced.
CREATE TABLE leaders (
    slot_name  text PRIMARY KEY,
    epoch      bigint NOT NULL,
    holder     text NOT NULL,       -- host and PID of the replica, for the other replicas' log lines
    since      timestamptz NOT NULL
);

ALTER TABLE checkpoints ADD COLUMN epoch bigint;

CREATE FUNCTION fence_checkpoint() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    current bigint;
BEGIN
    IF NEW.epoch IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT epoch INTO current FROM leaders WHERE slot_name = NEW.slot_name FOR SHARE;
    IF current IS DISTINCT FROM NEW.epoch THEN
        RAISE EXCEPTION 'the checkpoint of slot % was written by leader epoch %, and the slot''s leader is now epoch %',
            NEW.slot_name, NEW.epoch, current
            USING ERRCODE = 'LF001',
                  HINT = 'another replica took the slot over: this one stands by';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER checkpoints_fence BEFORE INSERT OR UPDATE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION fence_checkpoint();
