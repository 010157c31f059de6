"""Schedules end to end, on each backend: two real ``sluice scheduler`` processes, the active one
killed mid-way, six-field crons firing every 2-3 s, the stack's worker running the jobs.

What must hold: every fire time between the first and the last tick is exactly one row (a job or a
skip), however the schedulers raced or died; started ticks own the job derived from their time and
skipped ones none; an incremental SQL source (``:since``/``:until``) reads each change once; the
table sink upserts by key (a changed row replaces its result); each file sink holds exactly its
job's rows; a sink that fails is retried, given up, and written by ``sluice schedules sink-retry``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import create_engine, text

from sluice.cli import main
from sluice.clock import utcnow
from sluice.ledger.schedules import SchedulesLedger, TickInfo
from sluice.schedules.due import fire_times, job_id_for
from sluice.schedules.lease import LEASE_NAME
from sluice.settings import get_settings
from tests.integration.conftest import Stack
from tests.launch import spawn, wait_until

UTC_ZONE = ZoneInfo("UTC")
LEASE_S = 2.0
CRONS = {"tickets": "*/2 * * * * *", "inbox": "*/3 * * * * *", "blocked": "*/3 * * * * *"}
FAST = {"SLUICE_SCHEDULER_LEASE_SECONDS": str(LEASE_S), "SLUICE_SCHEDULER_RENEW_SECONDS": "0.5",
        "SLUICE_SCHEDULER_POLL_SECONDS": "0.25", "SLUICE_SCHEDULER_SINK_ATTEMPTS": "2",
        "SLUICE_SCHEDULER_SINK_BACKOFF": "0.5"}  # fmt: skip
DOCS = ["the invoice was charged twice", "the site is down again", "please add dark mode", "refund my order"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def user_db(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """The user's own database (sources and table sinks): a SQLite file, or the stack's PostgreSQL."""
    url = stack.settings.resolved_database_url
    yield f"sqlite:///{tmp_path / 'user.db'}" if url.startswith("sqlite") else url


class World:
    """The files, tables and processes of one run."""

    def __init__(self, stack: Stack, tmp: Path, user_url: str, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
        self.stack, self.tmp, self.user_url = stack, tmp, user_url
        self.monkeypatch, self.capsys = monkeypatch, capsys
        self.src, self.dst = f"src_{uuid.uuid4().hex[:6]}", f"dst_{uuid.uuid4().hex[:6]}"
        self.user = create_engine(user_url)
        self.store = SchedulesLedger.for_settings(stack.settings)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        (tmp / "inbox").mkdir()
        (tmp / "inbox" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
        (tmp / "blocker").write_text("a file where the sink wants a directory\n")
        self.schedules = tmp / "schedules.toml"
        self.schedules.write_text(self._toml())
        with self.user.begin() as conn:
            stamp = "timestamptz" if user_url.startswith("postgresql") else "timestamp"
            conn.execute(text(f"create table {self.src} (id varchar(16) primary key, body text, updated_at {stamp})"))
        self.change(["r1", "r2", "r3"], utcnow() - timedelta(seconds=1))

    def _toml(self) -> str:
        sql = f"select id, body from {self.src} where updated_at > :since and updated_at <= :until"
        return f"""
[schedules.tickets]
cron = "{CRONS["tickets"]}"
model = "minilm"
source = {{ sql = "{sql}", url = "{self.user_url}", key_column = "id", text_column = "body" }}
sink = {{ table = "{self.dst}", url = "{self.user_url}" }}

[schedules.inbox]
cron = "{CRONS["inbox"]}"
model = "minilm"
overlap = "allow"
source = {{ path = "{self.tmp}/inbox/*.jsonl" }}
sink = {{ path = "{self.tmp}/out/{{schedule}}/{{date}}-{{time}}.jsonl" }}

[schedules.blocked]
cron = "{CRONS["blocked"]}"
model = "minilm"
source = {{ path = "{self.tmp}/inbox/a.jsonl" }}
sink = {{ path = "{self.tmp}/blocker/{{schedule}}/{{time}}.csv" }}
"""

    def change(self, ids: list[str], at: datetime) -> None:
        """Insert or touch source rows, stamped ``at``."""
        with self.user.begin() as conn:
            for i in ids:
                conn.execute(text(f"delete from {self.src} where id = :i"), {"i": i})
                conn.execute(text(f"insert into {self.src} values (:i, :b, :t)"), {"i": i, "b": f"ticket {i}", "t": at})

    def env(self, name: str) -> dict[str, str]:
        self.ports[name] = _port()
        return {**self.stack.env, **FAST, "SLUICE_SCHEDULES_FILE": str(self.schedules),
                "SLUICE_METRICS_PORT": str(self.ports[name])}  # fmt: skip

    def start(self, name: str) -> None:
        cmd = [sys.executable, "-m", "sluice.cli", "scheduler", "--holder", name]
        self.procs[name] = spawn(cmd, self.env(name), self.tmp / f"{name}.log", "scheduler")

    def cli(self, *args: str) -> tuple[int, str]:
        """``sluice ARGS`` in this process (an interpreter start per command is seconds here): exit code, output."""
        for key, value in {**self.stack.env, "SLUICE_SCHEDULES_FILE": str(self.schedules)}.items():
            self.monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        self.capsys.readouterr()
        try:
            code = main(list(args))
        finally:
            get_settings.cache_clear()
        out = self.capsys.readouterr()
        return code, out.out + out.err

    def holder(self) -> str | None:
        lease = self.store.lease_holder(LEASE_NAME)
        return lease[0] if lease and lease[1] > utcnow() and lease[0] in self.procs else None

    def ticks(self, name: str) -> list[TickInfo]:
        return sorted(self.store.ticks(name, 10_000), key=lambda t: t.scheduled_at)

    def finished(self, name: str, after: datetime, n: int, sink: str = "done") -> bool:
        runs = [t for t in self.ticks(name) if t.scheduled_at > after and t.outcome == "started"]
        return len([t for t in runs if t.sink_status == sink]) >= n

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log"))


def test_failover_every_tick_once_incremental_sql_and_sinks(
    stack: Stack, tmp_path: Path, user_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(stack, tmp_path, user_db, monkeypatch, capsys)
    resumed = _crashed_claims(world)
    for name in ("a", "b"):
        world.start(name)
    try:
        _run_and_fail_over(world)
    except AssertionError:
        with capsys.disabled():
            print(world.logs())
        raise
    finally:
        for proc in world.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in world.procs.values():
            proc.wait(timeout=30)
    for name, cron in CRONS.items():
        _every_fire_time_once(world, name, cron)
    _resumed_claims_started_once(world, resumed)
    _incremental_source_and_table_sink(world)
    _file_sinks_hold_their_jobs_rows(world)
    _blocked_sink_retried_by_hand(world)


def _crashed_claims(world: World) -> list[datetime]:
    """Two ticks claimed by a scheduler that crashed: one before submitting, one after (its job exists)."""
    at = [utcnow() - timedelta(minutes=m) for m in (3, 2)]
    for when in at:
        world.store.insert_tick({"schedule": "inbox", "scheduled_at": when, "trigger": "manual", "outcome": "claimed",
                                 "claimed_by": "crashed", "claimed_at": when})  # fmt: skip
    world.stack.client.submit("minilm", DOCS, job_id=job_id_for("inbox", at[1]))
    return at


def _run_and_fail_over(world: World) -> None:
    first = wait_until(world.holder, 60, "a scheduler to take the lease")
    assert first is not None  # wait_until returns a truthy value
    start = utcnow() - timedelta(seconds=30)
    wait_until(lambda: world.finished("tickets", start, 1) and world.finished("inbox", start, 2)
               and world.finished("blocked", start, 1, sink="failed"),
               90, "runs and sinks before the kill")  # fmt: skip
    assert world.cli("schedules", "pause", "blocked") == (0, "paused\n")
    world.procs[first].kill()
    world.procs[first].wait()
    killed = time.monotonic()
    kill_at = utcnow()
    world.change(["r1", "r4", "r5"], utcnow())
    second = wait_until(lambda: (h := world.holder()) != first and h, 30, "the standby to take over")
    assert isinstance(second, str)
    takeover = time.monotonic() - killed
    with world.capsys.disabled():
        print(f"\ntakeover after {takeover:.1f} s (lease {LEASE_S} s)")
    assert takeover < LEASE_S + 3
    wait_until(lambda: world.finished("tickets", kill_at, 1) and world.finished("inbox", kill_at, 2), 90,
               "runs and sinks after the takeover")  # fmt: skip
    wait_until(lambda: not any(t.outcome in ("claimed", "buffered") for n in CRONS for t in world.ticks(n)), 30,
               "claims left by the killed scheduler to be resumed")  # fmt: skip
    metrics = httpx.get(f"http://127.0.0.1:{world.ports[second]}/metrics", timeout=10).text
    assert 'sluice_schedule_ticks_total{outcome="started"}' in metrics
    assert 'sluice_schedule_ticks_total{outcome="missed"} 0.0' in metrics


def _every_fire_time_once(world: World, name: str, cron: str) -> None:
    ticks = [t for t in world.ticks(name) if t.trigger == "cron"]
    times = [t.scheduled_at for t in ticks]
    expected = fire_times(cron, UTC_ZONE, times[0] - timedelta(microseconds=1), times[-1], limit=10_000)
    assert times == expected, f"{name}: gaps or extra ticks"
    assert {t.outcome for t in ticks} <= {"started", "skipped"}, [(t.outcome, t.reason) for t in ticks]
    jobs = {j.id for j in world.stack.client.jobs(100_000)}
    for t in ticks:
        assert (t.job_id == job_id_for(name, t.scheduled_at)) if t.outcome == "started" else t.job_id is None
        assert (job_id_for(name, t.scheduled_at) in jobs) == (t.outcome == "started")


def _resumed_claims_started_once(world: World, at: list[datetime]) -> None:
    for when in at:
        tick = world.store.tick("inbox", when)
        assert tick is not None and tick.outcome == "started" and tick.job_id == job_id_for("inbox", when)
        assert world.stack.client.status(tick.job_id).total == len(DOCS)


def _keys(world: World, job_id: str) -> set[str]:
    return {r["key"] for r in world.stack.client.results(job_id)}


def _incremental_source_and_table_sink(world: World) -> None:
    started = [t for t in world.ticks("tickets") if t.outcome == "started"]
    assert [_keys(world, str(t.job_id)) for t in started] == [{"r1", "r2", "r3"}, {"r1", "r4", "r5"}]
    skipped = [t.reason or "" for t in world.ticks("tickets") if t.outcome == "skipped"]
    assert all("no items" in r or "still going (overlap skip)" in r for r in skipped), skipped
    with world.user.connect() as conn:
        rows = {r.key: r for r in conn.execute(text(f"select * from {world.dst}"))}
    assert sorted(rows) == ["r1", "r2", "r3", "r4", "r5"]
    owner = {"r1": started[1], "r2": started[0], "r3": started[0], "r4": started[1], "r5": started[1]}
    for key, row in rows.items():
        assert row.job_id == owner[key].job_id and row.schedule == "tickets"
        result = next(r for r in world.stack.client.results(row.job_id) if r["key"] == key)
        vector = json.loads(row.embedding) if isinstance(row.embedding, str) else list(row.embedding)
        assert vector == pytest.approx(result["embedding"], abs=1e-6) and len(vector) == 384


def _file_sinks_hold_their_jobs_rows(world: World) -> None:
    done = [t for t in world.ticks("inbox") if t.sink_status == "done"]
    assert len(done) >= 4
    for tick in done:
        path = Path(str(tick.sink_target))
        assert path.parent == world.tmp / "out" / "inbox"
        written = [json.loads(line) for line in path.read_text().splitlines()]
        expected = [json.loads(json.dumps(r)) for r in world.stack.client.results(str(tick.job_id))]
        assert written == expected and tick.sink_rows == len(DOCS)


def _blocked_sink_retried_by_hand(world: World) -> None:
    ticks = world.ticks("blocked")
    failed = [t for t in ticks if t.sink_status == "failed"]
    assert failed and all(t.sink_attempts == 2 for t in failed)
    paused_at = world.store.ensure_schedules(["blocked"], utcnow())["blocked"].paused_at
    assert paused_at is not None and all(t.scheduled_at <= paused_at + timedelta(seconds=1) for t in ticks)
    code, out = world.cli("schedules", "check")
    assert code == 2 and "blocker" in out  # a file where the sink wants a directory
    (world.tmp / "blocker").unlink()
    code, out = world.cli("schedules", "check")
    assert code == 0 and "3 schedule(s), 0 with problems" in out, out
    code, out = world.cli("schedules", "sink-retry", "blocked")
    assert code == 0 and out.startswith("done: 4"), out
    assert "done (4 rows)" in world.cli("schedules", "history", "blocked")[1]
    assert "paused" in world.cli("schedules", "list")[1]
    code, out = world.cli("schedules", "run", "inbox")
    assert code == 0 and out.startswith("started: "), out
    job = out.split()[1]
    assert world.stack.client.wait(job, timeout=60).done == len(DOCS)
    assert any(t.trigger == "manual" and t.job_id == job for t in world.ticks("inbox"))
