"""Real message brokers for the queue sources' tests, started once per session (fixtures in conftest.py).

Each runs as a child process on a free loopback port with its files in a temporary directory: Debian's
``redis-server`` and ``nats-server`` (.ci/run installs them), and for Kafka librdkafka's mock cluster from
the confluent-kafka wheel (tests/kafka_mock.py). No Docker. Each child gets SIGKILL when the test process
dies (PR_SET_PDEATHSIG on Linux; the Kafka mock also exits when its stdin closes).

What the brokers support, as found with redis-server 7.0.15, nats-server 2.9.10, confluent-kafka 2.16.2
(librdkafka 2.16.0), aiokafka 0.14.0, redis-py 8.2.0 and nats-py 2.16.0; tests/integration/test_brokers.py
proves each working point.

Kafka (librdkafka's mock cluster, spoken to with aiokafka):
* Works: produce and consume with keys and headers; partitions chosen by the producer; consumer group
  join, commit, and a second member of the group resuming from the committed offset; ``seek``;
  ``end_offsets``; a transactional producer (``transactional_id``: ``begin_transaction``, ``send``,
  ``commit_transaction``, ``abort_transaction``, ``send_offsets_to_transaction`` all succeed).
* Topics: the mock brokers implement no CreateTopics (nor DescribeConfigs, DeleteTopics, CreatePartitions,
  DescribeGroups, ListGroups): AIOKafkaAdminClient.create_topics fails (AttributeError: the mock's metadata
  names no controller; sent to a broker directly, aiokafka refuses with IncompatibleBrokerVersion as
  ApiVersions does not list it); confluent-kafka's AdminClient times out "waiting for controller".
  Create topics through ``KafkaMock.create_topic(name, partitions)`` (rd_kafka_mock_topic_create). A
  topic that does not exist is auto-created on the first Metadata request for it (aiokafka's producer or
  consumer) with 4 partitions. Topic configs cannot be set: no ``cleanup.policy=compact``, no compaction.
* read_committed is not implemented: the mock writes the commit/abort markers but returns no aborted
  transactions and no last stable offset, so a consumer with ``isolation_level="read_committed"`` sees
  aborted messages and those of an open transaction; the same with confluent-kafka's consumer. Tests of
  exactly-once reading need a real Kafka.
* The transaction markers the mock writes have a CRC aiokafka rejects (CorruptRecordException "Invalid
  CRC") when it fetches them: a consumer of a topic that transactions wrote needs ``check_crcs=False``.
* TxnOffsetCommit is acknowledged but not stored: the group's committed offset does not move after
  ``send_offsets_to_transaction`` + commit (with confluent-kafka's producer too). Commit offsets with the
  consumer's ``commit`` in tests.
* Group rebalances wait ``session_timeout_ms`` - 1 s after a member leaves (aiokafka's default 10 s makes
  the next join take 9 s): use KAFKA_FAST_GROUP for consumers of a group that is joined more than once.
* No API version pin is needed: aiokafka negotiates from the mock's ApiVersions (Produce v0-10, Fetch
  v0-16, JoinGroup v0-6, TxnOffsetCommit v0-3 ...); ``api_version=`` is deprecated in aiokafka 0.13+.

Redis (redis-server, redis.asyncio): streams work in full: XADD, XGROUP CREATE/SETID, XREADGROUP, XACK,
XPENDING, XCLAIM (with ``idle=0`` it resets a pending entry's idle time: a lease extension) and XAUTOCLAIM.
Persistence is off (``--save ''``, no AOF): a server restart loses everything.

NATS (nats-server -js, nats-py): JetStream streams, durable pull consumers with
``DeliverPolicy.BY_START_SEQUENCE``, fetch, ack, ``in_progress()`` (AckProgress restarts ack_wait) and
redelivery after ack_wait all work.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# How long a broker may take to accept connections before its test session fails.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05
KAFKA_MOCK_SCRIPT = Path(__file__).resolve().parent / "kafka_mock.py"
# aiokafka consumer settings for a group that members leave and join within one test: the mock waits
# session_timeout_ms - 1 s after a leave before it completes the next join (0.5 s instead of 9 s).
KAFKA_FAST_GROUP: dict[str, int] = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300}
PR_SET_PDEATHSIG = 1
# Characters legal in a Kafka topic, a Redis key, a NATS stream and a NATS durable name alike.
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class BrokerError(RuntimeError):
    """A test broker did not start or refused a command: the message has its log."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (Linux only). The signal
    follows the parent *thread*: the fixtures start brokers from pytest's main thread."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Broker:
    """One broker child process, its log file and its temporary directory."""

    def __init__(self, name: str, argv: list[str], directory: Path, *, stdin: bool = False) -> None:
        self.name = name
        self.directory = directory
        self.log = directory / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdin else log,
                stderr=log,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def error(self, what: str) -> BrokerError:
        log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        return BrokerError(f"{self.name} {what} (exit code {self.process.poll()}); its log:\n{log}")

    def wait_listening(self, host: str, port: int, timeout: float = START_TIMEOUT_S) -> None:
        """Poll until ``host:port`` accepts a TCP connection; fail with the log if the broker exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self.error(f"exited before listening on {host}:{port}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
                return
            if time.monotonic() > deadline:
                raise self.error(f"did not listen on {host}:{port} within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise BrokerError(
            f"{program} is not on PATH: the queue tests start one (apt-get install redis-server nats-server)"
        )
    return path


@contextlib.contextmanager
def broker_directory(name: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix=f"listener-test-{name}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server without persistence; yields ``redis://127.0.0.1:PORT/0``."""
    with broker_directory("redis") as directory:
        port = free_port()
        argv = [require("redis-server"), "--bind", "127.0.0.1", "--port", str(port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
        broker = Broker("redis-server", argv, directory)
        try:
            broker.wait_listening("127.0.0.1", port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            broker.stop()


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A nats-server with JetStream, its store in a temporary directory; yields ``nats://127.0.0.1:PORT``."""
    with broker_directory("nats") as directory:
        port = free_port()
        store = directory / "jetstream"
        argv = [require("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
        broker = Broker("nats-server", argv, directory)
        try:
            broker.wait_listening("127.0.0.1", port)
            yield f"nats://127.0.0.1:{port}"
        finally:
            broker.stop()


class KafkaMock:
    """librdkafka's mock cluster (tests/kafka_mock.py) in a child process."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self.bootstrap = self._read_line(START_TIMEOUT_S)
        if not re.fullmatch(r"[\w.]+:\d+(,[\w.]+:\d+)*", self.bootstrap):
            raise broker.error(f"printed {self.bootstrap!r}, not its bootstrap servers")

    def _read_line(self, timeout: float) -> str:
        stdout = self._broker.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline().decode().strip() if ready else ""
        if not line:
            raise self._broker.error(f"did not answer within {timeout:.0f} s")
        return line

    def create_topic(self, name: str, partitions: int) -> None:
        """Create a topic (the mock implements no CreateTopics request: see the module's notes)."""
        stdin = self._broker.process.stdin
        assert stdin is not None
        with self._lock:
            stdin.write(f"topic {name} {partitions}\n".encode())
            stdin.flush()
            answer = self._read_line(START_TIMEOUT_S)
        if answer != "ok":
            raise BrokerError(f"kafka mock: topic {name!r} with {partitions} partitions: {answer}")


@contextlib.contextmanager
def kafka_mock() -> Iterator[KafkaMock]:
    """A 3-broker mock Kafka cluster; its ``bootstrap`` is ``127.0.0.1:PORT,127.0.0.1:PORT,...``."""
    with broker_directory("kafka") as directory:
        broker = Broker("kafka-mock", [sys.executable, str(KAFKA_MOCK_SCRIPT)], directory, stdin=True)
        try:
            mock = KafkaMock(broker)
            host, port = mock.bootstrap.split(",")[0].rsplit(":", 1)
            broker.wait_listening(host, int(port))
            yield mock
        finally:
            broker.stop()


def unique_name(test_name: str) -> str:
    """A name for one test's topic, stream, group or consumer: the test's name (made safe for every broker)
    and a random suffix, so tests on a session's shared broker never meet."""
    return f"{NAME_UNSAFE.sub('_', test_name)[:60]}-{uuid.uuid4().hex[:8]}"


def flush_redis(url: str) -> None:
    import redis

    client: redis.Redis = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
