"""Micro-benchmark: nanoseconds per pgoutput Insert decode (not a test).

Run: ``python bench/decode_micro.py`` from the repository root.  The message is a realistic row of a
4-column table (bigint id, text, text, timestamptz) in text format, as pgoutput sends it, outside a
streamed block.  Reports the best of several repeats for a ``bytes`` payload and for a ``memoryview``
slice of a CopyData buffer (what psycopg hands the replication loop).
"""

from __future__ import annotations

import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listener.pg.pgoutput import Decoder, Insert, Update

NUMBER = 200_000
REPEAT = 7
COLUMNS = (b"1234567", b"alice", b"alice@example.com", b"2024-05-17 12:34:56.789012+00")


def _text(value: bytes) -> bytes:
    return b"t" + struct.pack(">i", len(value)) + value


def insert_message() -> bytes:
    tuple_data = struct.pack(">h", len(COLUMNS)) + b"".join(_text(v) for v in COLUMNS)
    return b"I" + struct.pack(">I", 16385) + b"N" + tuple_data


def update_message() -> bytes:
    key = struct.pack(">h", 4) + _text(COLUMNS[0]) + b"nnn"
    tuple_data = struct.pack(">h", len(COLUMNS)) + b"".join(_text(v) for v in COLUMNS)
    return b"U" + struct.pack(">I", 16385) + b"K" + key + b"N" + tuple_data


def best_ns(stmt: object, number: int = NUMBER) -> float:
    times = timeit.repeat(stmt, number=number, repeat=REPEAT)  # type: ignore[arg-type]
    return min(times) / number * 1e9


def main() -> None:
    decoder = Decoder(1)
    decode = decoder.decode
    insert = insert_message()
    decoded = decode(insert)
    assert isinstance(decoded, Insert) and decoded.new == COLUMNS, decoded
    # psycopg returns each CopyData as a memoryview; the payload follows the 25-byte XLogData header.
    copy_data = memoryview(b"w" + bytes(24) + insert)
    view = copy_data[25:]
    update = update_message()
    assert isinstance(decode(update), Update)

    print(f"python {sys.version.split()[0]}, {len(insert)}-byte Insert of {len(COLUMNS)} text columns")
    print(f"  Insert, bytes payload:       {best_ns(lambda: decode(insert)):7.0f} ns/decode")
    print(f"  Insert, memoryview payload:  {best_ns(lambda: decode(view)):7.0f} ns/decode")
    print(f"  Update (old key + new row):  {best_ns(lambda: decode(update)):7.0f} ns/decode")
    print(f"  (empty call overhead:        {best_ns(lambda: None):7.0f} ns)")


if __name__ == "__main__":
    main()
