"""A Kafka cluster for the tests: librdkafka's mock cluster, from the library in the confluent-kafka wheel.

Run as ``python tests/kafka_mock.py``: it prints the bootstrap servers (``127.0.0.1:PORT,...``) on one line,
then reads commands on stdin, one a line, answering each with one line (``ok`` or ``error: ...``):

    topic NAME PARTITIONS    create a topic (replication factor 3)

It exits when stdin closes, so it dies with the test process that started it.

librdkafka is driven through ctypes, not through confluent_kafka's classes: topics with a chosen number of
partitions can only be made with ``rd_kafka_mock_topic_create``, which needs the ``rd_kafka_t`` handle
that confluent_kafka does not expose (the mock brokers do not implement CreateTopics; see tests/brokers.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

BROKERS = 3
REPLICATION_FACTOR = 3
# The mock group coordinator waits this long before it answers a group's first join (Kafka's
# group.initial.rebalance.delay.ms); librdkafka's default of 3 s would make every test wait.
INITIAL_REBALANCE_DELAY_MS = 0
RD_KAFKA_PRODUCER = 0
ERRSTR_SIZE = 512


def load_librdkafka() -> ctypes.CDLL:
    """The librdkafka the confluent_kafka wheel bundles (its ``confluent_kafka.libs``), else the system's."""
    import confluent_kafka

    bundled = sorted(
        (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*")
    )
    path = str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka")
    if path is None:
        raise SystemExit("kafka_mock: no librdkafka found (pip install confluent-kafka)")
    lib = ctypes.CDLL(path)
    p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.rd_kafka_conf_new.restype = p
    lib.rd_kafka_conf_set.argtypes = [p, s, s, s, ctypes.c_size_t]
    lib.rd_kafka_new.restype = p
    lib.rd_kafka_new.argtypes = [i, p, s, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [p]
    lib.rd_kafka_handle_mock_cluster.restype = p
    lib.rd_kafka_handle_mock_cluster.argtypes = [p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = s
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [p]
    lib.rd_kafka_mock_topic_create.argtypes = [p, s, i, i]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [p, ctypes.c_int32]
    lib.rd_kafka_err2str.restype = s
    lib.rd_kafka_err2str.argtypes = [i]
    return lib


def main() -> None:
    lib = load_librdkafka()
    errstr = ctypes.create_string_buffer(ERRSTR_SIZE)
    conf = lib.rd_kafka_conf_new()
    # A client with test.mock.num.brokers starts a mock cluster of that many brokers on 127.0.0.1.
    if lib.rd_kafka_conf_set(conf, b"test.mock.num.brokers", str(BROKERS).encode(), errstr, ERRSTR_SIZE):
        raise SystemExit(f"kafka_mock: {errstr.value.decode()}")
    rk = lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, ERRSTR_SIZE)
    if not rk:
        raise SystemExit(f"kafka_mock: {errstr.value.decode()}")
    cluster = lib.rd_kafka_handle_mock_cluster(rk)
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, INITIAL_REBALANCE_DELAY_MS)
    print(lib.rd_kafka_mock_cluster_bootstraps(cluster).decode(), flush=True)
    for line in sys.stdin:
        match line.split():
            case ["topic", name, partitions] if partitions.isdigit():
                err = lib.rd_kafka_mock_topic_create(
                    cluster, name.encode(), int(partitions), REPLICATION_FACTOR
                )
                answer = "ok" if err == 0 else f"error: {lib.rd_kafka_err2str(err).decode()}"
            case _:
                answer = f"error: unknown command {line.strip()!r} (topic NAME PARTITIONS)"
        print(answer, flush=True)
    lib.rd_kafka_destroy(rk)


if __name__ == "__main__":
    main()
