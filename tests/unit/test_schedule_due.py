"""Schedules, pure: cron times in a time zone across DST changes, six-field (seconds) crons, the
catch-up window, overlap policies, at-most-once across restarts and racing schedulers, and the
schedules file's validation. No clock is read: every ``now`` is given."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sluice.schedules.config import (
    FileSink,
    Overlap,
    ScheduleConfigError,
    SqlSource,
    TableSink,
    load_schedules,
    parse_duration,
    parse_schedules,
)
from sluice.schedules.due import (
    EPOCH,
    Action,
    Runs,
    cursor,
    decide,
    fire_times,
    job_id_for,
    next_fire,
    plan,
    since_bound,
    sink_path,
    sink_retry_at,
)

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# cron and time zones ---------------------------------------------------------------------------
def test_a_daily_cron_fires_at_local_time_on_both_sides_of_summer_time() -> None:
    times = fire_times("0 2 * * *", BERLIN, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    # 02:00 CET = 01:00Z; on 29 March 02:00 does not exist: 03:00 CEST (01:00Z); then 02:00 CEST = 00:00Z
    assert times == [utc(2026, 3, 28, 1), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0), utc(2026, 3, 31, 0)]


def test_a_fixed_hour_cron_fires_once_in_the_repeated_fall_back_hour() -> None:
    times = fire_times("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12))
    assert times == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_an_interval_cron_keeps_its_interval_through_both_dst_changes() -> None:
    spring = fire_times("*/30 * * * *", BERLIN, utc(2026, 3, 29, 0), utc(2026, 3, 29, 2))
    assert [t - s for s, t in itertools.pairwise(spring)] == [timedelta(minutes=30)] * (len(spring) - 1)
    fall = fire_times("*/30 * * * *", BERLIN, utc(2026, 10, 24, 23, 15), utc(2026, 10, 25, 2, 15))
    assert len(fall) == 6 and len(set(fall)) == 6  # both passes through 02:00-03:00 local
    assert all(t - s == timedelta(minutes=30) for s, t in itertools.pairwise(fall))


def test_six_fields_put_the_seconds_first() -> None:
    times = fire_times("*/10 * * * * *", UTC_ZONE, T0, T0 + timedelta(seconds=35))
    assert times == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]
    assert fire_times("15 * * * * *", UTC_ZONE, T0, T0 + timedelta(minutes=2)) == [
        T0 + timedelta(seconds=15), T0 + timedelta(minutes=1, seconds=15)]  # fmt: skip


def test_fire_times_exclude_the_cursor_and_stop_at_the_limit() -> None:
    assert fire_times("* * * * *", UTC_ZONE, T0, T0 + timedelta(minutes=1)) == [T0 + timedelta(minutes=1)]
    assert len(fire_times("* * * * * *", UTC_ZONE, T0, T0 + timedelta(days=1), limit=50)) == 50
    assert next_fire("0 2 * * *", BERLIN, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)


def test_the_cursor_never_reaches_back_before_first_sight_or_a_resume() -> None:
    seen, last, resumed = T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    assert cursor(seen, None, None) == seen
    assert cursor(seen, last, None) == last
    assert cursor(seen, last, resumed) == resumed


# catch-up and overlap ---------------------------------------------------------------------------
def test_ticks_older_than_the_catch_up_window_are_missed_younger_ones_run() -> None:
    times = fire_times("*/10 * * * *", UTC_ZONE, T0 - timedelta(hours=1), T0)  # a scheduler down for an hour
    decisions = plan(Overlap.ALLOW, times, T0, timedelta(minutes=25), Runs())
    assert [d.action for d in decisions] == [Action.MISSED] * 3 + [Action.START] * 3
    assert "catch-up" in (decisions[0].reason or "")


def test_a_tick_a_moment_late_runs_even_with_no_catch_up_window() -> None:
    assert decide(Overlap.SKIP, T0, T0 + timedelta(seconds=2), timedelta(0), Runs()).action is Action.START
    assert decide(Overlap.SKIP, T0, T0 + timedelta(seconds=30), timedelta(0), Runs()).action is Action.MISSED


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Overlap.SKIP, [Action.SKIP, Action.SKIP, Action.SKIP]),
        (Overlap.BUFFER_ONE, [Action.BUFFER, Action.SKIP, Action.SKIP]),
        (Overlap.ALLOW, [Action.START, Action.START, Action.START]),
        (Overlap.CANCEL_PREVIOUS, [Action.SKIP, Action.SKIP, Action.REPLACE]),
    ],
)
def test_overlap_policies_while_a_run_is_going(policy: Overlap, expected: list[Action]) -> None:
    times = [T0 + timedelta(seconds=s) for s in (0, 1, 2)]
    decisions = plan(policy, times, T0 + timedelta(seconds=2), timedelta(minutes=1), Runs(going=(T0 - timedelta(1),)))
    assert [d.action for d in decisions] == expected
    assert all(d.reason for d in decisions if d.action is not Action.START)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Overlap.SKIP, [Action.START, Action.SKIP]),
        (Overlap.BUFFER_ONE, [Action.START, Action.BUFFER]),
        (Overlap.ALLOW, [Action.START, Action.START]),
        (Overlap.CANCEL_PREVIOUS, [Action.SKIP, Action.START]),
    ],
)
def test_catching_up_two_ticks_with_nothing_going(policy: Overlap, expected: list[Action]) -> None:
    times = [T0, T0 + timedelta(seconds=10)]
    decisions = plan(policy, times, T0 + timedelta(seconds=10), timedelta(minutes=1), Runs())
    assert [d.action for d in decisions] == expected


def test_a_buffered_run_blocks_a_second_buffer() -> None:
    runs = Runs(going=(T0,), buffered=True)
    assert decide(Overlap.BUFFER_ONE, T0, T0, timedelta(minutes=1), runs).action is Action.SKIP


# at most once -------------------------------------------------------------------------------------
class TickBook:
    """The tick table's one rule, in memory: a (schedule, time) is claimed once."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, datetime], str] = {}

    def claim(self, name: str, at: datetime, by: str) -> bool:
        return self.rows.setdefault((name, at), by) == by

    def last(self, name: str) -> datetime | None:
        return max((at for n, at in self.rows if n == name), default=None)


def _pass(book: TickBook, by: str, now: datetime, seen: datetime) -> list[datetime]:
    start = cursor(seen, book.last("s"), None)
    times = fire_times("*/10 * * * * *", UTC_ZONE, start, now)
    return [d.at for d in plan(Overlap.ALLOW, times, now, timedelta(minutes=1), Runs()) if book.claim("s", d.at, by)]


def test_each_tick_runs_once_across_restarts_and_racing_schedulers() -> None:
    book, seen = TickBook(), T0
    ran: list[datetime] = []
    for step in range(1, 13):  # two schedulers race each pass; a restarted one knows only the table
        now = T0 + timedelta(seconds=5 * step)
        ran += _pass(book, "a", now, seen) + _pass(book, "b", now, seen)
        if step % 3 == 0:
            ran += _pass(book, f"a-restart-{step}", now, seen)
    assert ran == [T0 + timedelta(seconds=s) for s in range(10, 61, 10)]
    assert job_id_for("s", ran[0]) == job_id_for("s", ran[0].astimezone(BERLIN)) != job_id_for("s", ran[1])


def test_since_is_the_last_success_else_the_files_else_the_epoch() -> None:
    assert since_bound(None, None) == EPOCH
    assert since_bound(None, T0) == T0
    assert since_bound(T0 + timedelta(1), T0) == T0 + timedelta(1)


def test_sink_back_off_doubles_to_a_cap_then_gives_up() -> None:
    waits = [sink_retry_at(n, T0, 5, 30, 5) for n in range(1, 6)]
    assert [(w - T0).total_seconds() for w in waits[:4] if w] == [5, 10, 20, 30]
    assert waits[4] is None


def test_sink_paths_use_the_schedules_local_date_and_time() -> None:
    path = sink_path("/out/{schedule}/{date}-{time}-{job}.parquet", "nightly", utc(2026, 6, 30, 22, 30), BERLIN, "j1")
    assert path == "/out/nightly/2026-07-01-003000-j1.parquet"


# the schedules file -------------------------------------------------------------------------------
GOOD = """
[schedules.nightly-tickets]
cron = "0 2 * * *"
timezone = "Europe/Berlin"
model = "minilm-topics"
params = { candidate_labels = ["billing", "outage"] }
priority = 3
source = { sql = "select id, body from tickets where updated_at > :since", url_env = "TICKETS_DB", key_column = "id", text_column = "body" }
sink = { table = "ticket_topics", url_env = "TICKETS_DB" }
overlap = "buffer_one"
catchup = "1h"

[schedules.inbox]
cron = "*/10 * * * * *"
model = "minilm"
source = { path = "/data/inbox/*.jsonl" }
sink = { path = "/data/out/{schedule}/{date}.parquet" }
"""  # noqa: E501


def test_a_valid_file_reads_into_schedules(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(GOOD)
    schedules = load_schedules(tmp_path / "s.toml", env={"TICKETS_DB": "postgresql://u:pw@db/t"})
    nightly, inbox = schedules["nightly-tickets"], schedules["inbox"]
    assert nightly.overlap is Overlap.BUFFER_ONE and nightly.catchup == timedelta(hours=1) and nightly.priority == 3
    assert isinstance(nightly.source, SqlSource) and nightly.source.url == "postgresql://u:pw@db/t"
    assert nightly.sink == TableSink("ticket_topics", "postgresql://u:pw@db/t")
    assert inbox.with_seconds and inbox.timezone == "UTC" and inbox.overlap is Overlap.SKIP
    assert inbox.sink == FileSink("/data/out/{schedule}/{date}.parquet")


def test_every_problem_is_reported_with_what_to_fix() -> None:
    bad = {"schedules": {"x": {
        "cron": "0 2 * *", "timezone": "Mars/Olympus", "model": "", "priority": 12, "overlap": "forbid",
        "catchup": "soon", "source": {"sql": "select 1"}, "sink": {"path": "/o/{day}.xlsx"}, "colour": "red",
    }}}  # fmt: skip
    schedules, problems = parse_schedules(bad, env={})
    assert schedules == {}
    text = "\n".join(problems)
    for expected in ("4 fields", "Mars/Olympus", "model is missing", "0-9", "forbid", "duration", "url_env",
                     "{day}", ".xlsx", "'colour'"):  # fmt: skip
        assert expected in text, expected


def test_a_bad_file_raises_a_config_error_listing_the_problems(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[schedules.a]\ncron = "61 * * * *"\nmodel = "m"\nsource = { path = "x" }\n')
    with pytest.raises(ScheduleConfigError, match="not a valid expression") as info:
        load_schedules(tmp_path / "s.toml", env={})
    assert len(info.value.problems) == 1


def test_durations() -> None:
    assert parse_duration(90) == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("1 hour")
