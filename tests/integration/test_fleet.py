"""The worker fleet for real: a supervisor, two pinned worker processes, Redis, a database.

``sluice worker --gpus 0,1 --device cpu`` is the fake-device mode: each child is pinned with
``CUDA_VISIBLE_DEVICES`` and named ``gpu<id>@host`` as on a GPU machine, but runs on the CPU.
Every wait polls the database or the broker with a deadline; nothing sleeps for work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from producer.client import Client
from sluice import migrate
from sluice.celery_app import SluiceCelery, create_app
from sluice.clock import utcnow
from sluice.db import Chunk, Item, Job
from sluice.ledger import NewJob
from sluice.routing import model_queue
from sluice.settings import Settings
from sluice.status import ChunkStatus, ItemStatus, JobStatus
from tests.conftest import make_settings, settings_env
from tests.launch import start_fleet, stop_worker, wait_for_worker, wait_until
from tests.models.common import mixed_texts

MODEL = "tiny-clf"
# One backend: the supervisor never touches the database, and what the workers need from one
# (claims, leases, a killed worker's chunk coming back) is tested on both in test_store.py; a
# second fleet, on SQLite, cost two more worker processes for the same supervisor checks.
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@dataclass
class Fleet:
    settings: Settings
    client: Client
    app: SluiceCelery
    env: dict[str, str]
    host: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def nodes(self) -> list[str]:
        return [f"gpu0@{self.host}", f"gpu1@{self.host}"]

    def start(self) -> None:
        """(Re)start the supervisor and wait until both children answer a ping."""
        self.proc = start_fleet(self.env, [MODEL], "0,1", self.host, self.log)
        try:
            for node in self.nodes:
                wait_for_worker(self.app, node, self.proc, timeout=120)
        except Exception:
            print(self.log.read_text(errors="replace")[-5000:])
            raise


@pytest.fixture(scope="module")
def fleet(
    database_url: str, broker_url: str, registry_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """One supervised pair for the whole module (starting workers is the slow part)."""
    var = tmp_path_factory.mktemp("fleet")
    # Small chunks and no coalescing, so both workers get a share.
    settings = make_settings(
        database_url, broker_url, var, models_file=registry_file, chunk_size=8, coalesce_chunks=0
    ).model_copy(update={"queue": f"fleet-{uuid.uuid4().hex[:8]}"})
    migrate.upgrade(settings)
    env = {**settings_env(settings), "SLUICE_COALESCE_CHUNKS": "0"}
    env.pop("SLUICE_TORCH_THREADS")  # the supervisor splits the cores itself
    host = f"fleet-{uuid.uuid4().hex[:8]}"
    fleet = Fleet(settings, Client(settings), create_app(settings), env, host, var / "fleet.log", None)  # type: ignore[arg-type]
    fleet.start()
    yield fleet
    stop_worker(fleet.proc, timeout=60)


def children(parent: int) -> dict[str, int]:
    """Celery node name -> pid of the worker processes whose parent is ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if ppid == parent and b"--hostname" in argv:
            found[argv[argv.index(b"--hostname") + 1].decode()] = int(entry.name)
    return found


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


def finish(fleet: Fleet, job: str, timeout: float = 120) -> None:
    """Poll until the job ends (no reconcile: what a killed worker held comes back by itself)."""
    deadline = time.monotonic() + timeout
    while not (info := fleet.client.status(job, explain=False)).status.terminal:
        assert time.monotonic() < deadline, (
            f"job still {info.status} after {timeout}s: {info.finished}/{info.total}; open chunks "
            f"{open_chunks(fleet, job)}; log tail {fleet.log.read_text(errors='replace')[-3000:]}"
        )
        time.sleep(0.2)
    assert info.status is JobStatus.COMPLETED


def open_chunks(fleet: Fleet, job: str) -> list[tuple[object, ...]]:
    """The job's chunks not done, with their lease state: what a stuck job is waiting on."""
    cols = (Chunk.idx, Chunk.start, Chunk.stop, Chunk.status, Chunk.deliveries, Chunk.leased_by, Chunk.leased_at,
            Chunk.enqueued_at, Chunk.queue)  # fmt: skip
    with fleet.client.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).where(Chunk.job_id == job, Chunk.status != "done"))]


def assert_exactly_once(fleet: Fleet, job: str, total: int) -> Counter[str]:
    """Every item done once, the job's counters equal to its item rows; items per worker node."""
    with fleet.client.engine.connect() as conn:
        counters = conn.execute(select(Job.total_items, Job.done_items, Job.failed_items).where(Job.id == job)).one()
        rows = conn.execute(select(Item.item, Item.status, Item.worker).where(Item.job_id == job)).all()
        query = select(Item.status, func.count()).where(Item.job_id == job).group_by(Item.status)
        by_status = dict(conn.execute(query).all())
    assert sorted(r.item for r in rows) == list(range(total))
    assert by_status == {ItemStatus.DONE.value: total}
    assert tuple(counters) == (total, total, 0)
    return Counter(r.worker for r in rows)


def running_chunks(fleet: Fleet, job: str) -> int:
    with fleet.client.engine.connect() as conn:
        query = select(func.count()).where(Chunk.job_id == job, Chunk.status == ChunkStatus.RUNNING.value)
        return int(conn.execute(query).scalar_one())


def test_job_spreads_over_pinned_workers(fleet: Fleet) -> None:
    pids = children(fleet.proc.pid)
    assert sorted(pids) == fleet.nodes
    for node, pid in pids.items():
        env = environ_of(pid)
        assert env["CUDA_VISIBLE_DEVICES"] == node[3]  # gpu<id>@host
        assert env["TOKENIZERS_PARALLELISM"] == "false" and env["SLUICE_TORCH_THREADS"] == env["OMP_NUM_THREADS"]
    job = fleet.client.submit(MODEL, mixed_texts(160, seed=3))
    finish(fleet, job)
    per_worker = assert_exactly_once(fleet, job, 160)
    assert set(per_worker) == set(fleet.nodes), per_worker


def test_killed_worker_is_restarted_and_nothing_is_lost(fleet: Fleet) -> None:
    total = 320
    job = fleet.client.submit(MODEL, mixed_texts(total, seed=4))
    wait_until(lambda: fleet.client.status(job).finished >= 16, 60, "first results")
    victim = children(fleet.proc.pid)[fleet.nodes[1]]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    assert not fleet.client.status(job).status.terminal, "job finished before the kill; make it bigger"
    new_pid = wait_until(lambda: children(fleet.proc.pid).get(fleet.nodes[1], victim) != victim and
                         children(fleet.proc.pid)[fleet.nodes[1]], 30, "restart")  # fmt: skip
    wait_for_worker(fleet.app, fleet.nodes[1], fleet.proc, timeout=120)
    print(f"restart: new pid {new_pid} answered a ping {time.monotonic() - killed_at:.1f}s after SIGKILL")
    # The restarted gpu1 re-enqueues the chunk its killed predecessor held, and gives back a message
    # it had received but not yet claimed (reclaim_own at start); without that the chunk would wait
    # for Redis's visibility timeout or an expired lease. CI once killed it inside that window.
    finish(fleet, job)
    assert_exactly_once(fleet, job, total)
    assert fleet.proc.poll() is None and "died (signal SIGKILL" in fleet.log.read_text(errors="replace")


def test_a_message_lost_on_its_way_to_a_worker_comes_back_without_reconcile(fleet: Fleet) -> None:
    """Redis popped it and the worker died before recording it unacked (or Redis evicted it): the
    chunks are queued, recorded sent, and in no queue. The workers' heartbeat heals them."""
    job, texts = str(uuid.uuid4()), mixed_texts(16, seed=6)
    ledger = fleet.client.ledger
    new = NewJob(job, "text-classification", MODEL, {}, 0, 8)
    ledger.create_job(new, [(n, {"text": t}, None) for n, t in enumerate(texts)], lambda chunks: None)
    ledger.mark_sent(job, [0, 1], model_queue(fleet.settings.queue, MODEL))  # whose messages never arrive
    with fleet.client.engine.begin() as conn:
        conn.execute(update(Chunk).where(Chunk.job_id == job).values(enqueued_at=utcnow() - timedelta(seconds=60)))
    started = time.monotonic()
    finish(fleet, job, timeout=60)  # within a heartbeat interval or two (10 s), not Redis's visibility timeout
    print(f"lost messages healed: job finished {time.monotonic() - started:.1f}s later")
    assert_exactly_once(fleet, job, 16)
    assert "wait on an empty queue and no worker holds them; re-sent" in fleet.log.read_text(errors="replace")


def test_sigterm_stops_the_fleet_warmly_and_restarting_finishes(fleet: Fleet) -> None:
    total = 320
    job = fleet.client.submit(MODEL, mixed_texts(total, seed=5))
    wait_until(lambda: fleet.client.status(job).finished >= 16, 60, "first results")
    pids = children(fleet.proc.pid)
    fleet.proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert fleet.proc.wait(timeout=60) == 0
    print(f"supervisor exited {time.monotonic() - stopped_at:.1f}s after SIGTERM")
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()  # the supervisor reaped every child before exiting
    info = fleet.client.status(job)
    assert info.finished < total, "job finished before the stop; make it bigger"
    assert running_chunks(fleet, job) == 0  # each child finished its chunk and closed the lease
    fleet.start()  # the same fleet again (it stays up for the module's other tests)
    finish(fleet, job)  # no reconcile: the warm shutdown lost nothing
    assert_exactly_once(fleet, job, total)
