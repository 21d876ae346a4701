"""A transaction of a few huge rows: under the README's 300 MB, and the stream stays responsive meanwhile
(the walsender's timeout never fires).  Before the huge-row copies were cut (issue 9.7) it peaked at 423 MB;
now about 210 MB."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integration.test_memory import CONFIG, RSS_BOUND, count, listener_run, streaming, wait

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.mark.slow
def test_a_transaction_of_huge_rows_stays_under_the_bound_and_answers_keepalives(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    """12 rows of 49 MB in one transaction: every row becomes its event, under 300 MB of RSS, and the
    stream is never silent long enough for the walsender to time out (20 s here)."""
    sql.execute("CREATE TABLE big (id int PRIMARY KEY, body text)")
    params = conninfo_to_dict(dsn)
    params["options"] = "-c wal_sender_timeout=20s"
    listener_dsn = make_conninfo(**params)  # type: ignore[arg-type]
    config = CONFIG.format(rule="table: big, on: [insert]")
    log = tmp_path / "run.log"
    with listener_run(listener_dsn, config, tmp_path) as (proc, peak):
        wait(proc, lambda: streaming(sql), "streaming", log)
        sql.execute(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 49000000 / 32) FROM generate_series(1, 12) g"
        )
        wait(proc, lambda: count(sql, "SELECT count(*) FROM listener.events") == 12, "12 events", log)
        assert proc.poll() is None, log.read_text()[-3000:]
    text = log.read_text()
    assert "interrupted" not in text and "terminating walsender" not in text, text[-3000:]
    lengths = sql.execute(
        "SELECT length(payload -> 'new' ->> 'body') FROM listener.events ORDER BY seq"
    ).fetchall()
    assert lengths == [(49000000 // 32 * 32,)] * 12
    assert peak.peak < RSS_BOUND, f"peak RSS {peak.peak / 2**20:.0f} MB"
