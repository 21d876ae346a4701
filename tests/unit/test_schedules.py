"""When schedules tick (listener.rules.schedules): cron specs in a time zone across daylight-saving changes
(Debian cron's behaviour, as cronsim implements it), ``every:`` aligned to the epoch, jitter the same on
every replica, missed ticks split into made up and counted; and the config's refusals, with file:line."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from listener.errors import ConfigError
from listener.rules.config import load_config, parse_config
from listener.rules.schedules import Schedule, missed_between, tick_text

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def schedule(**entry: str) -> Schedule:
    spec = ", ".join(f'{k}: "{v}"' for k, v in entry.items())
    config = parse_config(f"schedules: [{{name: s, workflow: 'm:f', {spec}}}]")
    return Schedule(config.schedules[0])


def local_ticks(s: Schedule, start: datetime, n: int, zone: ZoneInfo = PARIS) -> list[str]:
    return [t.astimezone(zone).isoformat() for t in itertools.islice(s.ticks_after(start), n)]


def test_a_fixed_time_skipped_by_the_spring_change_fires_once_at_the_first_instant_after_the_gap() -> None:
    # 2026-03-29: Paris clocks go from 02:00 to 03:00; 02:30 does not exist that night
    s = schedule(cron="30 2 * * *", tz="Europe/Paris")
    assert local_ticks(s, datetime(2026, 3, 28, 12, tzinfo=PARIS), 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_fixed_time_repeated_by_the_autumn_change_fires_once() -> None:
    # 2026-10-25: Paris clocks go from 03:00 back to 02:00; 02:30 happens twice
    s = schedule(cron="30 2 * * *", tz="Europe/Paris")
    assert local_ticks(s, datetime(2026, 10, 24, 12, tzinfo=PARIS), 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # resumed in the repeated hour, after the first 02:30 fired: not again
    second_fold = datetime(2026, 10, 25, 2, 0, fold=1, tzinfo=PARIS)
    assert local_ticks(s, second_fold, 1) == ["2026-10-26T02:30:00+01:00"]


def test_a_wildcard_spec_fires_in_both_occurrences_of_the_repeated_hour() -> None:
    s = schedule(cron="*/30 * * * *", tz="Europe/Paris")
    assert local_ticks(s, datetime(2026, 10, 25, 1, 45, tzinfo=PARIS), 5) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    in_utc = list(itertools.islice(s.ticks_after(datetime(2026, 10, 25, tzinfo=UTC)), 8))
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(in_utc))  # even steps


def test_ticks_are_distinct_utc_instants_moving_forward_across_a_year_of_changes() -> None:
    for zone, spec in (("Europe/Paris", "0,30 1-3 * * *"), ("America/New_York", "15 * * * *")):
        s = schedule(cron=spec, tz=zone)
        ticks = list(itertools.islice(s.ticks_after(datetime(2026, 1, 1, tzinfo=UTC)), 24 * 365))
        assert all(t.tzinfo is UTC for t in ticks)
        assert all(a < b for a, b in itertools.pairwise(ticks))


def test_the_us_spring_gap_and_a_named_nickname() -> None:
    s = schedule(cron="@daily", tz="America/New_York")
    assert local_ticks(s, datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), 2, NEW_YORK) == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-09T00:00:00-04:00",
    ]
    at_gap = schedule(cron="30 2 8 3 *", tz="America/New_York")  # 02:30 on the night of the change
    first = local_ticks(at_gap, datetime(2026, 3, 1, tzinfo=NEW_YORK), 1, NEW_YORK)
    assert first == ["2026-03-08T03:00:00-04:00"]


def test_a_six_field_spec_ticks_by_the_second() -> None:
    s = schedule(cron="*/15 * * * * *")
    start = datetime(2026, 12, 7, 10, 0, 7, tzinfo=UTC)
    assert [tick_text(t) for t in itertools.islice(s.ticks_after(start), 3)] == [
        "2026-12-07T10:00:15Z",
        "2026-12-07T10:00:30Z",
        "2026-12-07T10:00:45Z",
    ]


def test_every_ticks_at_multiples_of_its_interval_since_the_epoch_whatever_the_zone() -> None:
    s = schedule(every="7s", tz="Asia/Kolkata")
    start = datetime(2026, 12, 7, 10, 0, 0, 500_000, tzinfo=UTC)
    ticks = list(itertools.islice(s.ticks_after(start), 3))
    assert all(t.timestamp() % 7 == 0 for t in ticks)
    assert ticks[0] > start and ticks[0] - start <= timedelta(seconds=7)
    assert s.key(ticks[0]) == f"schedule/s/{tick_text(ticks[0])}/0"
    exact = datetime.fromtimestamp(ticks[0].timestamp(), UTC)
    assert next(s.ticks_after(exact)) == ticks[1]  # strictly after


def test_jitter_is_within_bounds_spread_and_the_same_for_every_replica() -> None:
    s = schedule(every="1m", jitter="30s")
    ticks = list(itertools.islice(s.ticks_after(datetime(2026, 12, 7, tzinfo=UTC)), 200))
    delays = [(s.fire_at(t) - t).total_seconds() for t in ticks]
    assert all(0 <= d < 30 for d in delays)
    assert len(set(delays)) > 150  # spread, not one constant delay
    again = schedule(every="1m", jitter="30s")
    assert [again.fire_at(t) for t in ticks] == [s.fire_at(t) for t in ticks]
    assert schedule(every="1m").fire_at(ticks[0]) == ticks[0]


@pytest.mark.parametrize("spec", [{"every": "1s"}, {"cron": "* * * * * *"}])
def test_missed_ticks_are_made_up_within_catchup_and_the_older_ones_counted(spec: dict[str, str]) -> None:
    s = schedule(catchup="10s", **spec)
    last = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
    now = last + timedelta(seconds=100, milliseconds=500)
    due, older, first, final = missed_between(s, last, now, 1000)
    assert [tick_text(t) for t in due][:1] == ["2026-12-07T10:01:31Z"]  # now - 10s = 10:01:30.5
    assert len(due) == 10 and due[-1] == last + timedelta(seconds=100)
    assert older == 90 and first == last + timedelta(seconds=1) and final == last + timedelta(seconds=90)


def test_missed_ticks_at_the_catchup_horizon_itself_are_made_up_and_counting_stops_at_its_limit() -> None:
    s = schedule(every="1s", catchup="10s")
    last = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
    due, older, _, _ = missed_between(s, last, last + timedelta(seconds=20), 1000)
    assert len(due) == 11 and older == 9  # 10:00:10 (the horizon) to 10:00:20 are made up
    cron = schedule(cron="* * * * * *", catchup="10s")
    due, older, _, final = missed_between(cron, last, last + timedelta(hours=1), 100)
    assert older == 100 and len(due) == 11  # a lower bound, said as "at least"; what is due still fires
    assert final is not None and final < due[0]
    none = schedule(every="1s", catchup="0s")
    due, older, _, _ = missed_between(none, last, last + timedelta(seconds=5, milliseconds=1), 1000)
    assert due == [] and older == 5


def test_nothing_is_missed_right_after_the_last_tick() -> None:
    s = schedule(cron="0 2 * * *", tz="Europe/Paris")
    last = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)  # 02:00 Paris
    assert missed_between(s, last, last + timedelta(hours=23), 1000) == ([], 0, None, None)


@pytest.mark.parametrize(
    ("entry", "where", "message"),
    [
        ('cron: "61 * * * *"', ":4:", "is not a cron spec: Bad minute"),
        ('cron: "0 0 30 2 *"', ":4:", "is not a cron spec"),
        ("every: 1.5s", ":4:", "is not a whole number of seconds"),
        ("every: 30", ":4:", "30 has no unit"),
        ("tz: Mars/Olympus\n    every: 1s", ":4:", "'Mars/Olympus' is not a time zone"),
        ('cron: "@daily"\n    every: 5s', ":2:", "needs exactly one of `cron:` and `every:`"),
        ("every: 2s\n    jitter: 2s", ":2:", "jitter 2s is not shorter than every 2s"),
        ("every: 1s\n    overlap: never", ":5:", "unknown overlap 'never'"),
        ("every: 1s\n    catchup: soon", ":5:", "'soon' is not a duration"),
    ],
)
def test_a_bad_schedule_is_refused_naming_its_line_and_the_fix(
    tmp_path: Path, entry: str, where: str, message: str
) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(f"schedules:\n  - name: x\n    workflow: a.b:c\n    {entry}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert f"{path}{where}" in text and message in text and "fix:" in text, text


def test_two_schedules_with_one_name_are_refused_at_the_second(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(
        "schedules:\n  - {name: a, every: 1s, workflow: 'm:f'}\n"
        "  - name: a\n    every: 2s\n    workflow: m:f\n"
    )
    with pytest.raises(ConfigError, match="already used by schedules") as raised:
        load_config(path)
    assert f"{path}:3:" in str(raised.value)
