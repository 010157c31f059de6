"""Faults injected into real processes recover without a manual step (PostgreSQL, Redis, workers).

Each test states its bound. Counts come from the item rows themselves: every item ends exactly
once (the primary key forbids a second row; the job's counters must equal the rows), none is
failed that should not be.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from producer.client import Client
from sluice import migrate
from sluice.celery_app import create_app
from sluice.db import Item
from sluice.process import spawn, stop_worker, wait_for_worker, worker_command
from sluice.settings import Settings
from sluice.status import JobStatus
from tests.conftest import _postgres_database, make_settings, settings_env
from tests.faults.hooks import POISON, SLOW
from tests.faults.proxy import CuttableProxy

FAST = {"SLUICE_HEARTBEAT_SECONDS": "1", "SLUICE_LEASE_SECONDS": "4", "SLUICE_MAX_ATTEMPTS": "2"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_database(f"fault{uuid.uuid4().hex[:6]}")


def _settings(url: str, broker: str, var: Path, **extra: object) -> Settings:
    settings = make_settings(url, broker, var, chunk_size=4, heartbeat_seconds=1, lease_seconds=4, max_attempts=2)
    return settings.model_copy(update={"queue": f"fault-{uuid.uuid4().hex[:8]}", **extra})


def _start(
    settings: Settings, var: Path, name: str, env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.Popen[bytes]:
    host = f"{name}@faults"
    proc = spawn(worker_command(["minilm"], hostname=host), {**settings_env(settings), **FAST, **(env or {})},
                 var / f"{name}.log")  # fmt: skip
    if wait:
        wait_for_worker(create_app(settings), host, proc)
    return proc


def _reconciler(settings: Settings, var: Path) -> subprocess.Popen[bytes]:
    cmd = [*worker_command([])[:3], "reconcile", "--every", "1"]
    return spawn(cmd, {**settings_env(settings), **FAST}, var / "reconcile.log")


def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.2)
    return time.monotonic() - start


def _exactly_once(client: Client, jobs: list[str]) -> dict[str, int]:
    """Item rows by status over ``jobs``, checked against each job's counters (no drift)."""
    with client.engine.connect() as conn:
        rows = conn.execute(select(Item.status, func.count()).where(Item.job_id.in_(jobs)).group_by(Item.status))
        counts = {status: n for status, n in rows}
    infos = [client.status(j, explain=False) for j in jobs]
    assert sum(i.done for i in infos) == counts.get("done", 0)
    assert sum(i.failed for i in infos) == counts.get("failed", 0)
    return counts


def test_a_database_outage_is_a_slow_retry_and_loses_nothing(pg_url: str, broker_url: str, tmp_path: Path) -> None:
    """Faults 2 and 4: the worker's database link drops for 6 s mid-job."""
    target = pg_url.rsplit("@", 1)[1].split("/", 1)[0].split(":")
    proxy = CuttableProxy((target[0], int(target[1])))
    proxied = pg_url.replace(f"{target[0]}:{target[1]}", f"127.0.0.1:{proxy.port}")
    settings = _settings(pg_url, broker_url, tmp_path)
    migrate.upgrade(settings)
    worker = _start(settings, tmp_path, "outage", {"SLUICE_DATABASE_URL": proxied})
    reconciler = _reconciler(settings, tmp_path)
    try:
        client = Client(settings)
        job = client.submit("minilm", [f"document {i} " * (1 + i % 7) for i in range(240)])
        _until(lambda: client.status(job, explain=False).finished >= 40, 120, "first results")
        proxy.cut()
        time.sleep(6)  # the outage itself: nothing to wait for, its length is the fault
        proxy.restore()
        took = _until(lambda: client.status(job, explain=False).status.terminal, 90, "job end after the outage")
        assert _exactly_once(client, [job]) == {"done": 240}
        assert worker.poll() is None
        log = (tmp_path / "outage.log").read_text(errors="replace")
        requeues = log.count("requeued")
        print(f"database outage: 240 items, 0 lost, 0 duplicated, 0 failed, recovered {took:.1f}s after, "
              f"{requeues} requeue(s)")  # fmt: skip
        assert requeues <= 12, log[-3000:]  # back-off, not a hot loop (thousands before)
        assert log.count("unreachable; retrying with back-off") <= 3
    finally:
        for proc in (worker, reconciler):
            stop_worker(proc)
        proxy.close()


def test_redis_losing_its_messages_is_detected_by_the_periodic_reconcile(
    pg_url: str, broker_url: str, tmp_path: Path
) -> None:
    """Fault 3: the queue's messages vanish (restart without persistence, FLUSHALL) before any worker reads them."""
    settings = _settings(pg_url, broker_url, tmp_path)
    migrate.upgrade(settings)
    client = Client(settings)
    reconciler = _reconciler(settings, tmp_path)  # its first pass sets the broker's epoch marker
    r = redis.Redis.from_url(broker_url)
    _until(lambda: bool(r.exists(f"{settings.queue}:epoch")), 30, "the reconciler's first pass")
    jobs = [client.submit("minilm", [f"doc {j}.{i}" for i in range(6)]) for j in range(5)]
    # Redis loses this queue's data set, as a flush or a restart without persistence would.
    lost = [k for k in r.scan_iter(f"{settings.queue}*")]
    assert r.delete(*lost) >= 2  # the queue and the epoch marker
    worker = _start(settings, tmp_path, "after-flush")
    try:
        took = _until(lambda: all(client.status(j, explain=False).status.terminal for j in jobs), 90, "jobs end")
        assert _exactly_once(client, jobs) == {"done": 30}
        print(f"redis data loss: 30 items, 0 lost, 0 duplicated, 0 failed, recovered {took:.1f}s after the worker "
              "started, no manual step")  # fmt: skip
    finally:
        stop_worker(worker)
        stop_worker(reconciler)


def test_a_worker_killed_by_one_item_fails_only_that_item(pg_url: str, broker_url: str, tmp_path: Path) -> None:
    """Fault 5: a poison item kills the worker on every run that contains it; coalesced jobs too."""
    settings = _settings(pg_url, broker_url, tmp_path)
    migrate.upgrade(settings)
    client = Client(settings)
    innocent = [client.submit("minilm", [f"single {i}"]) for i in range(6)]
    poisoned = client.submit("minilm", ["fine 0", "fine 1", POISON, "fine 3"])
    hooks = {"SLUICE_HOOKS": "tests.faults.hooks:DieOnPoison"}
    worker, deaths = _start(settings, tmp_path, "victim", hooks, wait=False), 0
    jobs = [*innocent, poisoned]
    start = time.monotonic()
    try:
        while not all(client.status(j, explain=False).status.terminal for j in jobs):
            assert time.monotonic() - start < 300, f"{deaths} deaths and still not done"
            if worker.poll() is not None:  # as a supervisor would: restart under the same name
                deaths += 1
                worker = _start(settings, tmp_path, "victim", hooks, wait=False)
            time.sleep(0.2)
        took = time.monotonic() - start
        assert _exactly_once(client, jobs) == {"done": 9, "failed": 1}
        rows = list(client.results(poisoned))
        assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
        assert "without finishing" in rows[2]["error"]
        assert all(client.status(j).status is JobStatus.COMPLETED for j in innocent)
        print(f"poison item: 10 items, 0 lost, 0 duplicated, 0 wrongly failed, {deaths} worker deaths, {took:.1f}s")
        assert deaths <= 6
    finally:
        stop_worker(worker)


def test_submit_with_redis_down_and_a_chunk_past_its_time_limit(pg_url: str, broker_url: str, tmp_path: Path) -> None:
    """Fault 6: the broker is unreachable at submit; the job is kept, not lost or doubled, and the
    periodic reconcile sends it when the broker is back.

    Hard time limit (same worker): a run that hangs is stopped at SLUICE_CHUNK_TIME_LIMIT (Celery
    enforces none in the solo pool), its chunk released (one lease at a time) and split until the
    hanging item is alone; it fails, every other item completes, the worker never dies.
    """
    settings = _settings(pg_url, broker_url, tmp_path)
    migrate.upgrade(settings)
    down = Client(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    stored = down.submit("minilm", ["a", "b", "c"])
    assert stored in down.unsent and "unreachable" in down.unsent[stored]
    client = Client(settings)
    env = {"SLUICE_HOOKS": "tests.faults.hooks:HangOnSlow", "SLUICE_CHUNK_TIME_LIMIT": "2"}
    worker, reconciler = _start(settings, tmp_path, "hang", env), _reconciler(settings, tmp_path)
    try:
        job = client.submit("minilm", ["fine 0", SLOW, "fine 2", "fine 3"])
        took = _until(lambda: client.status(job, explain=False).status.terminal, 120, "the job to end")
        assert _exactly_once(client, [job]) == {"done": 3, "failed": 1}
        rows = list(client.results(job))
        assert [r["status"] for r in rows] == ["done", "failed", "done", "done"]
        assert "without finishing" in rows[1]["error"]
        assert worker.poll() is None
        assert "ran past its time limit of 2s" in (tmp_path / "hang.log").read_text(errors="replace")
        print(f"time limit: 4 items, 0 lost, 0 duplicated, 0 wrongly failed, the hanging item failed in {took:.1f}s")
        late = _until(lambda: client.status(stored, explain=False).status.terminal, 60, "the stored job to run")
        assert _exactly_once(client, [stored]) == {"done": 3}
        print(f"submit with redis down: 3 items, 0 lost, 0 duplicated, sent and done within {took + late:.1f}s")
    finally:
        stop_worker(worker, timeout=5)
        stop_worker(reconciler)
