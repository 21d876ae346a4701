-- The slot's leader among `listener run` replicas (see 0010_leaders.sql and listener.ingest.leadership).

-- name: try_lead
-- placeholders: asyncpg
-- The session-level advisory lock of the slot (its key: listener.ingest.leadership.lock_key), without waiting.
SELECT pg_try_advisory_lock($1::int8)

-- name: elect
-- placeholders: asyncpg
-- Called by the lock's holder: the slot's next epoch, recorded with who holds it.  Its row lock waits for a
-- checkpoint write under way (the fence holds the row FOR SHARE), so that write commits before the new
-- epoch or is refused after it.
INSERT INTO leaders (slot_name, epoch, holder, since) VALUES ($1, 1, $2, now())
ON CONFLICT (slot_name) DO UPDATE SET epoch = leaders.epoch + 1, holder = excluded.holder, since = now()
RETURNING epoch

-- name: leader
-- placeholders: asyncpg
-- The slot's last elected leader: (epoch, holder, since), or no row.
SELECT epoch, holder, since FROM leaders WHERE slot_name = $1

-- name: leader_of
-- placeholders: psycopg
-- `listener status`: the slot's last elected leader (epoch, holder, since), and whether its lock is held now
-- (a replica leads) or not (none runs, or the last one stopped).
SELECT l.epoch, l.holder, l.since,
       EXISTS (SELECT FROM pg_locks k
               WHERE k.locktype = 'advisory' AND k.granted AND k.database = d.oid
                 AND ((k.classid::int8 << 32) | k.objid::int8) = %(key)s::int8)
FROM leaders l, pg_database d
WHERE l.slot_name = %(slot)s AND d.datname = current_database()
