"""Every tunable default of listener, in one place: timeouts, intervals, sizes and limits.

One unit suffix each: ``_S`` seconds, ``_MS`` milliseconds, ``_BYTES``, ``_CHARS``, ``_ROWS``; counts of
other things name them (``_EVENTS``, ``_MESSAGES``, ``_BATCHES``...).  The configuration's defaults (what a
file may leave out, ``listener.rules.config``) are the first section; the rest are fixed in the code.

Modules import the names they use (``from listener.defaults import LEASE_S``): a test that changes a value
patches the module that reads it.  This module imports nothing from listener.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------------
# The configuration file's defaults (README "Configuration").

DEFAULT_CONFIG_FILE = "listener.yaml"
DEFAULT_SLOT = "listener"
DEFAULT_PUBLICATION = "listener"
DEFAULT_STATE_SCHEMA = "listener"
# ingest:
BATCH_EVENTS = 5000
BATCH_DELAY_MS = 5.0
STATUS_INTERVAL_S = 10.0  # and the replication session's standby status updates
HEARTBEAT_S = 60.0  # a heartbeat message when the slot sent nothing for this long (0: none)
COMPACT_AFTER = 2000
COMPACT_CHUNK_CHANGES = 20000
EXPAND_AHEAD = 20000
BACKFILL_CHUNK_ROWS = 20_000  # rows a backfill reads between two watermarks (the unit of progress and of
# what a crash re-reads)
# worker:
WORKER_CONCURRENCY = 64
POLL_INTERVAL_S = 5.0
LEASE_S = 30.0  # a claimed run's lease, renewed by heartbeat every third of it
GRACE_S = 30.0  # on SIGTERM, how long running workflows may take to finish before their leases are released
THREAD_IDLE_S = 60.0  # a thread of plain step functions kept this long after its last one
RUN_TIMEOUT_S = 3600.0  # a run's timeout when its workflow sets none (@workflow(timeout=...))
# retain:
RETAIN_WARN_BYTES = 10 * 1024**3  # `listener status` warns above this much WAL held by the slot (no `size`)

# A configuration is a few hundred values a few levels deep.  PyYAML's composer recurses once per level
# (RecursionError near 1,000) and aliases share nodes, so `*a` used ten times in ten levels is a billion
# values ("billion laughs"): both are refused before anything is built.
CONFIG_MAX_DEPTH = 64
CONFIG_MAX_VALUES = 100_000

# ---------------------------------------------------------------------------------------------------------
# Connections and the replication session (pg/).

CONNECT_TIMEOUT_S = 10  # unless the DSN says otherwise
# After the flush position advances, tell the server within this delay (keeps the slot's
# confirmed_flush_lsn close to what is durable without one message per batch).
FLUSH_REPORT_DELAY_S = 0.05
READ_BATCH_MESSAGES = 2048
READ_BATCH_BYTES = 4 << 20  # ... or fewer: a read returns once it holds this much
# Python's json module (and psycopg's and asyncpg's json loaders with it) recurses once per level and
# raises RecursionError near 1,000 levels, while PostgreSQL accepts thousands: deeper values stay text.
MAX_JSON_DEPTH = 256
# Change.payload_json(huge=True): text values of this many bytes or more are escaped in pieces of the other
HUGE_TEXT_BYTES = 1 << 20
HUGE_TEXT_PIECE_BYTES = 1 << 20
# The embedded server
EMBEDDED_START_TIMEOUT_S = 60
EMBEDDED_STOP_TIMEOUT_S = 60

# ---------------------------------------------------------------------------------------------------------
# The state database (queue/, install/).

# A payload longer than this many characters (a huge row's) goes to the server in pieces of this size, through
# a large object of the writer's transaction: sent whole, the driver would hold three more copies of it (the
# statement's arguments, its message, the socket's backlog) beside the payload itself (invariant 6).
PAYLOAD_PIECE_CHARS = 4 << 20
PROBE_LOCK_TIMEOUT_MS = 10_000  # trying a row filter locks its table briefly; wait at most this long

# ---------------------------------------------------------------------------------------------------------
# Ingest (ingest/).

# A source submits a batch once its payloads, chunks and journal rows hold this much (invariant 6).
BATCH_BYTES = 16 << 20
WRITE_QUEUE_BATCHES = 1
# A put waits while the batches queued or being written hold this much (invariant 6: memory is bounded
# in bytes; one batch always goes through, however big its single huge row).
WRITE_QUEUE_BYTES = 32 << 20
# A compact chunk closes at this many bytes of changes.
COMPACT_CHUNK_BYTES = 16 << 20
# With the change journal on, a huge transaction's full journal rows (about 1 MB each) go to the state
# database this many at a time (between them, memory holds at most this many).
JOURNAL_BATCH_ROWS = 8
JOURNAL_ROW_BYTES = 1 << 20  # a journal row holds at most about this much (a huge transaction makes several)
JOURNAL_PRUNE_INTERVAL_S = 60.0
JOURNAL_PRUNE_BATCH_ROWS = 1000
# `runs: keep:` (listener.ingest.retention): the leader looks for finished runs to prune this often, and
# deletes the events of at most this many runs per transaction (short transactions, however many are due).
RUNS_PRUNE_INTERVAL_S = 60.0
RUNS_PRUNE_BATCH_ROWS = 1000
# A checkpoint that no event needs -- the server's position while idle, or the end of a transaction that
# made no event (PostgreSQL 14 streams an empty Begin/Commit for every transaction in the database, 15+ one
# for changes that no rule matches) -- is written at most this often; in between it waits for the next
# batch that has events.  Each such write is WAL itself (when the state database is the source), which would
# otherwise feed a loop of one write per transaction.
IDLE_CHECKPOINT_INTERVAL_S = 10.0
# With a retention window: at most one lsn_history row per this many seconds (the precision of
# `listener rewind --to-time`, and how often the confirmed position can move).
HISTORY_INTERVAL_S = 5.0
# A running ingest looks for recorded rewinds this often when no NOTIFY arrives (invariant 7).
REWIND_POLL_S = 5.0
SLOT_BUSY_RETRY_S = 15.0
SLOT_BUSY_WAIT_S = 1.0  # ... looking again this often
# The streaming slot's health (ingest/heartbeat.py): read this often; warned about once the WAL it may
# still hold before max_slot_wal_keep_size invalidates it (safe_wal_size) is below this part of that size.
SLOT_WATCH_S = 30.0
SLOT_SAFE_WAL_WARN_FRACTION = 0.2
# Leadership among replicas (ingest/leadership.py): a standby tries the slot's lock this often; the leader
# checks its lock's connection this often and stands down when a check gets no answer within the timeout;
# the server drops a vanished leader's connection (and lock) after LEADER_KEEPALIVE_S idle and 3 probes
# LEADER_KEEPALIVE_S apart unanswered (about 20 s; over TCP).
LEADER_POLL_S = 1.0
LEADER_CHECK_S = 1.0
LEADER_CHECK_TIMEOUT_S = 5.0
LEADER_KEEPALIVE_S = 5
WATCHER_EXIT_S = 5.0  # how long a stopping ingest waits for the rewind watcher to let go of its connection
# NOTIFYs waiting for the writer take at most this much memory (more are dropped: NOTIFY is at most once).
NOTIFY_BUFFER_BYTES = 16 << 20
# The expander
EXPAND_POLL_S = 0.25  # while held back by `ahead`: how often to look whether the workers caught up
EXPAND_IDLE_POLL_S = 5.0  # with no chunk known: a fallback in case a wake-up was missed
EXPAND_SLICE_ROWS = 2000  # backfill rows rendered between two turns of the event loop
# Backfills
BACKFILL_IN_FLIGHT = 2  # chunks read ahead of the one waiting to be durable (memory: this many at most)
BACKFILL_POLL_S = 5.0  # a running ingest looks for recorded backfills this often when no NOTIFY arrives
BACKFILL_RETRY_S = 1.0  # after a lost connection, try the backfill again after this long
# The SHARE lock around a backfill's low mark waits for the table's writers at most this long, then it tries
# again after BACKFILL_LOCK_RETRY_MIN_S, doubling up to BACKFILL_LOCK_RETRY_MAX_S.
BACKFILL_LOCK_TIMEOUT_MS = 200
BACKFILL_LOCK_RETRY_MIN_S = 0.05
BACKFILL_LOCK_RETRY_MAX_S = 2.0
BACKFILL_CANCEL_CHECK_S = 1.0  # a running backfill looks at its status this often (and when NOTIFY wakes it)

# ---------------------------------------------------------------------------------------------------------
# Workers and workflows (runtime/).

CLAIM_BATCH = 64  # runs claimed at once, at most
# Connections a worker process opens for its workflows' steps (ctx.transaction(), step records), at most:
# more workflows than this run at once (worker.concurrency), but only this many hold a transaction, so a
# few worker processes stay well inside the server's max_connections.
STEP_CONNECTIONS = 16
# `listener run`'s worker processes (listener.runtime.processes)
CHILD_START_TIMEOUT_S = 30.0  # starting one (the interpreter, not its imports)
CHILD_EXIT_MARGIN_S = 15.0  # after its grace period, how long a stopping one may take before it is killed
CHILD_SIGNALLED_S = 2.0  # one that stopped on a signal: how long the service waits for the signal's twin
GATED_SCAN = 500  # pending gated runs looked at per claim
HELD_POLL_S = 0.25  # when limits hold runs back, look again this soon
ERROR_CHARS = 2_000  # a failure's stored error text, at most
TRACEBACK_CHARS = 20_000  # and its stored traceback
# A workflow's or a step's retries (@workflow(...), ctx.step(..., retries=))
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0

# ---------------------------------------------------------------------------------------------------------
# The service and its supervision (service, supervise).

RESTART_MIN_S = 0.2
RESTART_MAX_S = 30.0
# A body that ran this long before failing was healthy: the failure starts a new outage (logged again,
# backoff from the start).
HEALTHY_AFTER_S = 30.0
RELOAD_ATTEMPTS = 5  # a reload meeting a (re)starting session or a lost connection is tried this often
RELOAD_WAIT_S = 30.0  # ... each time waiting this long at most for the session to stream
RELOAD_RETRY_S = 0.5
RELOAD_INTERVAL_S = 1.0  # at most one reload this often: requests meanwhile share the next one
RELOAD_POLL_S = 5.0  # the reloader looks for request rows this often should a NOTIFY be lost
RELOAD_ANSWER_POLL_S = 0.2  # `listener reload` looks at its request row this often

# ---------------------------------------------------------------------------------------------------------
# Commands (ops/).

RUNS_LIST_LIMIT = 50  # runs listed by default
RUN_LOCK_WAIT_S = 10  # longest wait for a run's row lock in retry and cancel
REWIND_WAIT_POLL_S = 0.5  # `listener rewind --wait` looks at the rewind this often
BACKFILL_FOLLOW_POLL_S = 0.5  # `listener backfill` looks at its row this often
REPLAY_BATCH_EVENTS = 5000
REPLAY_PREFETCH_ROWS = 8  # journal rows of up to about 1 MB each: memory stays bounded
DEMO_WAIT_S = 30.0
DEMO_ROWS = 6  # `listener demo --rows`
RELOAD_TIMEOUT_S = 30.0  # `listener reload --timeout`: how long to wait for the service's answer

# ---------------------------------------------------------------------------------------------------------
# The terminal (cli/).

PIPE_COLUMNS = 200  # columns of a table written to a pipe or file, where no terminal width can be measured
WIDE_COLUMNS = 150  # from this terminal width on, tables show every column (and steps, attempts as tables)
ERROR_CELL_CHARS = 60  # of a run's last error, in the table of `listener runs`
RESULT_CELL_CHARS = 60  # of a step's JSON result, in the table of `listener runs show`

# ---------------------------------------------------------------------------------------------------------
# The HTTP server (http/), when the config has an `http:` section.

HTTP_SHUTDOWN_GRACE_S = 5.0  # requests still running this long after the stop are cut off
HTTP_BACKLOG = 2048  # the listening socket's accept queue
READY_MAX_LAG_S = 300.0  # http: ready_max_lag_s: /readyz is 503 while ingest lags more than this
READY_CHECK_TIMEOUT_S = 2.0  # /readyz's check that the state database takes writes
METRICS_MIN_INTERVAL_S = 1.0  # scrapes closer than this share one reading of the databases
METRICS_QUERY_TIMEOUT_S = 5.0  # a scrape's reading of a database, at most (then listener_database_up 0)
# a lag measured longer ago than this, with nothing read since, is stale: the stream is idle and caught up
LAG_STALE_S = 120.0
WEBHOOK_TOLERANCE = "5m"  # how far a signed timestamp may be from now, either way
WEBHOOK_MAX_BODY = "1MB"  # a larger request body is refused (413)
WEBHOOK_WRITE_TIMEOUT_S = 10.0  # a request not durable by then is answered 503 (the provider retries)
WEBHOOK_PENDING_BYTES = 64 << 20  # bodies waiting to be written, at most; beyond, 503 (never more in memory)
WEBHOOK_RETRY_AFTER_S = 5  # the Retry-After of a 503
WEBHOOK_PRUNE_INTERVAL_S = 60.0  # how often requests older than a webhook's `keep:` are forgotten
WEBHOOK_PRUNE_ROWS = 10_000  # per statement (short transactions, however many are due)
WEBHOOK_WRITERS = 2  # webhook batches committed at once, each on its own connection (they have no order)
WEBHOOK_BACKLOG_POLL_S = 1.0  # how often the queue's backlog is counted against `http: max_backlog:`

# ---------------------------------------------------------------------------------------------------------
# Queue sources (`queues:`; listener.ingest.queues): Kafka, Redis Streams, NATS JetStream

QUEUE_MAX_BACKLOG = 10_000  # pending runs of ungated rules, at most: beyond, a queue source stops fetching
QUEUE_FETCH = 500  # messages asked for at once, at most
QUEUE_FETCH_WAIT_S = 1.0  # a fetch waits this long for messages, at most (then it asks again)
QUEUE_BACKLOG_POLL_S = 1.0  # while over `max_backlog:`, the backlog is counted again this often
QUEUE_EXTEND_S = 10.0  # messages fetched and not yet durable are extended this often (JetStream, Redis)
QUEUE_CONNECT_TIMEOUT_S = 10.0  # reaching a broker, at most (then a transient error: the source restarts)
KAFKA_OFFSETS_TOPIC = "listener.offsets"  # `sink: kafka:`: the compacted topic of the slots' checkpoints
KAFKA_SINK_TIMEOUT_S = 30.0  # a Kafka request not answered by then fails the session (it restarts)
KAFKA_TRANSACTION_TIMEOUT_MS = 900_000  # a Kafka transaction of the sink, at most (brokers' default max)
PARKED_LIST_LIMIT = 50  # parked messages `listener queues parked` lists by default
QUEUE_RETRY_MESSAGES = 100  # parked messages `listener replay --queue` reads (and commits) at a time
PARKED_PREVIEW_BYTES = 512  # of a body that is not UTF-8, `queues parked --show` prints this much as hex

# ---------------------------------------------------------------------------------------------------------
# Schedules (`schedules:`; listener.rules.schedules, listener.ingest.schedules)

SCHEDULE_TZ = "UTC"  # the time zone of a cron spec that names none
SCHEDULE_CATCHUP = "1h"  # ticks missed while down are made up when no older than this
SCHEDULE_STALL_S = 60.0  # a tick later than this (and catchup:) in a running service is missed, not fired
SCHEDULE_MISSED_COUNTED = 100_000  # missed ticks counted one by one, at most (then "more than")
SCHEDULE_NEXT_SHOWN = 3  # `listener schedules`: upcoming ticks shown per schedule
