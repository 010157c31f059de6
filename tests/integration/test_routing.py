"""Residency, routing and priority through real `sluice worker` processes, Redis and each database.

One fleet per backend, on its own queues: worker A preloads tiny-clf, worker B preloads tiny-ner
(both also read the shared queue), and worker L preloads nothing and may keep 250 kB of models,
which fits one of the two tiny models (~175 kB each) but not both, on a separate shared queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from producer.client import Client
from sluice import migrate
from sluice.celery_app import create_app
from sluice.clock import as_utc
from sluice.db import Chunk, Item
from sluice.ledger import Ledger
from sluice.routing import WorkerRow
from sluice.settings import Settings
from sluice.status import JobStatus, WorkerStatus
from tests.conftest import make_settings, settings_env
from tests.launch import start_worker, stop_worker, wait_for_worker
from tests.models.common import mixed_texts

# Routing reads the workers table through the ledger, which test_store covers on both backends;
# the fleet's six worker processes run once, on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

LRU_BUDGET = "250kB"


@dataclass
class Fleet:
    settings: Settings  # shared queue read by A and B
    lru_settings: Settings  # shared queue read by L only
    env: dict[str, str]
    hosts: dict[str, str]  # "a", "b", "lru" -> Celery node name
    procs: dict[str, subprocess.Popen[bytes]]

    def client(self, **update: object) -> Client:
        return Client(self.settings.model_copy(update=update))

    def row(self, name: str) -> WorkerRow:
        rows = Ledger(self.settings.resolved_database_url).load_workers(include_stale=True)
        return next(r for r in rows if r.hostname == self.hosts[name])


@pytest.fixture(scope="module")
def fleet(
    database_url: str, broker_url: str, registry_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    var = tmp_path_factory.mktemp("routing")
    tag = uuid.uuid4().hex[:6]
    base = make_settings(database_url, broker_url, var, models_file=registry_file, chunk_size=8)
    settings = base.model_copy(update={"queue": f"{base.queue}-routing-{tag}"})
    lru_settings = base.model_copy(update={"queue": f"{base.queue}-lru-{tag}"})
    migrate.upgrade(settings)
    # Coalescing off: the priority test needs one chunk per task, as a backlog of big jobs would have.
    env = {**settings_env(settings), "SLUICE_COALESCE_CHUNKS": "0"}
    plan = {
        "a": (["tiny-clf"], env, []),
        "b": (["tiny-ner"], env, []),
        "lru": ([], {**env, "SLUICE_QUEUE": lru_settings.queue}, ["--max-model-memory", LRU_BUDGET]),
    }
    hosts = {name: f"{name}-{tag}@localhost" for name in plan}
    procs = {
        name: start_worker(worker_env, models, var / f"{name}.log", hostname=hosts[name], extra=extra)
        for name, (models, worker_env, extra) in plan.items()
    }
    try:
        for name, proc in procs.items():
            wait_for_worker(create_app(settings), hosts[name], proc)
    except Exception:
        for name, proc in procs.items():
            stop_worker(proc)
            print(name, (var / f"{name}.log").read_text(errors="replace")[-3000:])
        raise
    yield Fleet(settings, lru_settings, env, hosts, procs)
    for proc in procs.values():
        stop_worker(proc)


def poll(check: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Wait for ``check`` to hold, polling the database; no fixed sleeps for work."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def short_texts(n: int) -> list[str]:
    """Texts a tiny token classifier handles in one window (a long document runs many)."""
    return [f"Document {i} goes to whichever worker holds its model." for i in range(n)]


def item_workers(client: Client, job: str) -> set[str | None]:
    with client.engine.connect() as conn:
        return set(conn.execute(select(Item.worker).distinct().where(Item.job_id == job)).scalars())


def finished_at(client: Client, job: str, last: bool = True) -> datetime:
    agg = func.max if last else func.min
    with client.engine.connect() as conn:
        return as_utc(conn.execute(select(agg(Item.finished_at)).where(Item.job_id == job)).scalar_one())


def sluice(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, check=True, timeout=120).stdout  # fmt: skip


def test_jobs_run_only_on_the_worker_that_preloads_their_model(fleet: Fleet) -> None:
    client = fleet.client()
    assert fleet.row("a").queues == (f"{fleet.settings.queue}.tiny-clf", fleet.settings.queue)
    assert [(m["model"], m["pinned"]) for m in fleet.row("a").models] == [("tiny-clf", True)]
    jobs = {"a": client.submit("tiny-clf", mixed_texts(48)), "b": client.submit("tiny-ner", short_texts(48))}
    for name, job in jobs.items():
        info = client.wait(job, timeout=120, poll_s=0.1)
        assert (info.status, info.done) == (JobStatus.COMPLETED, 48)
        assert item_workers(client, job) == {fleet.hosts[name]}


def test_urgent_job_overtakes_a_backlog_at_the_next_chunk(fleet: Fleet) -> None:
    client = fleet.client(chunk_size=2)  # small chunks: every chunk is a scheduling boundary
    queue, control = f"{fleet.settings.queue}.tiny-clf", create_app(fleet.settings).control
    # Worker A pauses its model queue while the backlog is written: on SQLite a writer can starve
    # behind a busy worker for seconds, and the backlog must be queued in full before it starts.
    control.cancel_consumer(queue, destination=[fleet.hosts["a"]], reply=True)
    backlog = client.submit("tiny-clf", mixed_texts(1000, seed=5), priority=0)
    control.add_consumer(queue, destination=[fleet.hosts["a"]], reply=True)
    poll(lambda: client.status(backlog).done >= 4, what="backlog start")
    urgent = client.submit("tiny-clf", mixed_texts(6, seed=6), priority=9)
    assert client.wait(urgent, timeout=120, poll_s=0.05).status is JobStatus.COMPLETED
    urgent_first = finished_at(client, urgent, last=False)
    with client.engine.connect() as conn:
        # enqueued_at is taken right after the messages went to Redis (before its UPDATE may wait
        # for SQLite's write lock), so it is when the worker could first have seen them.
        sent = as_utc(conn.execute(select(func.max(Chunk.enqueued_at)).where(Chunk.job_id == urgent)).scalar_one())
        in_between = (Item.job_id == backlog, Item.finished_at > sent, Item.finished_at < urgent_first)
        between = conn.execute(select(func.count()).where(*in_between)).scalar_one()
    client.cancel(backlog)
    # In FIFO order the urgent job would finish only after the whole backlog. (Whether a backlog
    # chunk finishes after the urgent job's last item races with the cancel just above.)
    assert client.status(backlog).pending > 0, "backlog ran first"
    # At most the backlog chunk in hand (and one fetched as the urgent messages landed) ran in between.
    assert between <= 2 * 2, f"{between} backlog items finished after the urgent job was queued, before it ran"


def test_job_for_a_model_no_live_worker_serves_is_reported_waiting(fleet: Fleet) -> None:
    nobody = fleet.settings.model_copy(update={"queue": f"{fleet.settings.queue}-nobody"})
    client = Client(nobody)
    job = client.submit("tiny-clf", ["nobody reads this queue"])
    reason = client.status(job).waiting_reason
    assert reason is not None and reason.startswith("waiting: no live worker serves model 'tiny-clf' (live workers:")
    assert fleet.hosts["a"] in reason and f"or the shared queue {nobody.queue})" in reason
    out = sluice({**fleet.env, "SLUICE_QUEUE": nobody.queue}, "status", job)
    assert "status: queued" in out and "waiting: no live worker serves model 'tiny-clf'" in out
    client.cancel(job)
    redis.Redis.from_url(nobody.broker_url or "").delete(nobody.queue, *(f"{nobody.queue}:{p}" for p in range(10)))
    # The same model on the fleet's own queues is served: no reason.
    served = fleet.client().submit("tiny-clf", ["served"])
    assert fleet.client().status(served).waiting_reason is None


def test_budget_evicts_least_recently_used_model(fleet: Fleet) -> None:
    client = Client(fleet.lru_settings)
    for model in ("tiny-clf", "tiny-ner", "tiny-clf"):
        info = client.wait(client.submit(model, short_texts(16)), timeout=120, poll_s=0.1)
        assert (info.status, info.done) == (JobStatus.COMPLETED, 16)
    row = fleet.row("lru")
    assert row.queues == (fleet.lru_settings.queue,) and row.memory_budget == 250_000
    assert [(m["model"], m["pinned"]) for m in row.models] == [("tiny-clf", False)]
    assert 150_000 < row.memory_used <= 250_000
    assert [(e["model"], e["for"]) for e in row.evictions] == [("tiny-clf", "tiny-ner"), ("tiny-ner", "tiny-clf")]
    out = sluice(fleet.env, "workers")
    assert fleet.hosts["lru"] in out and "evicted tiny-ner" in out and "/ 250.0 kB" in out
    assert f"{fleet.hosts['lru']}: live" in sluice(fleet.env, "workers", "--check", fleet.hosts["lru"])
    # A clean stop marks the row: routing drops it at once, `--all` still shows it.
    stop_worker(fleet.procs["lru"])
    assert fleet.row("lru").status is WorkerStatus.STOPPED and not fleet.row("lru").live
    # The last report totals the forward passes of the model since its (re)load: the last 16 items.
    (model,) = fleet.row("lru").models
    assert model["features"] == 16 and 0 < model["real_tokens"] <= model["padded_tokens"]
    assert fleet.hosts["lru"] not in sluice(fleet.env, "workers")
    assert f"{fleet.hosts['lru']}  stopped" in sluice(fleet.env, "workers", "--all")
    check = subprocess.run([sys.executable, "-m", "sluice.cli", "workers", "--check", fleet.hosts["lru"]],
                           env={**os.environ, **fleet.env}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert check.returncode == 1 and "not live" in check.stdout  # the Compose health check fails
