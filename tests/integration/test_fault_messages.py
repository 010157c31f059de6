"""Malformed messages against a real worker process, on real Redis and a real database.

Each kind is pushed raw onto the worker's queues (LPUSH, as a broken or hostile producer would):
it must be dead-lettered exactly once with its reason, never requeued, never kill the worker, and
the real job submitted next must complete with every item done exactly once, within a bound.
Pickle and yaml bodies would create a canary file if anything deserialised them.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import redis
from sqlalchemy import select

from producer.client import Client
from sluice import migrate
from sluice.broker import redis_client
from sluice.celery_app import PROCESS_CHUNK, create_app, redis_priority
from sluice.db import Item
from sluice.process import start_worker, stop_worker, wait_for_worker
from sluice.settings import Settings
from sluice.status import ItemStatus, JobStatus
from tests.conftest import make_settings, settings_env
from worker.messages import (
    BAD_ARGUMENTS,
    BAD_CHUNK_INDEX,
    BAD_JOB_ID,
    BODY_MALFORMED,
    BODY_UNDECODABLE,
    CONTENT_REFUSED,
    DEAD_LETTER_SUFFIX,
    ENVELOPE_NOT_JSON,
    NOT_A_CHUNK_TASK,
    REFUSED_BY_CELERY,
)

pytestmark = pytest.mark.integration

DROP_BOUND_S = 10.0  # every copy of a poison message dead-lettered within this
JOB_BOUND_S = 30.0  # the real job submitted after it done within this
ITEMS = 24
DROPPED_LINE = "dropped a message from"
FIGURES: dict[str, dict[str, Any]] = {}


@dataclass
class Faults:
    settings: Settings
    client: Client
    worker: Popen[bytes]
    redis: redis.Redis
    log: Path
    canaries: Path

    @property
    def model_queue(self) -> str:
        return f"{self.settings.queue}.minilm"

    @property
    def keys(self) -> list[str]:
        """Where poison goes: the model queue's first and default priority lists, the shared queue."""
        default = f"{self.model_queue}:{redis_priority(0)}"
        return [self.model_queue, default, self.settings.queue]

    @property
    def dead_letters(self) -> str:
        return self.settings.queue + DEAD_LETTER_SUFFIX

    def queued(self) -> int:
        """Messages on the worker's queues, every priority."""
        shared, model = self.settings.queue, self.model_queue
        return sum(int(self.redis.llen(k)) for q in (shared, model) for k in [q, *(f"{q}:{p}" for p in range(1, 10))])

    def drop_lines(self) -> int:
        return self.log.read_text(errors="replace").count(DROPPED_LINE)


@pytest.fixture(scope="module")
def faults(database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    """One worker process (preloading minilm) on queues of its own, for the whole module."""
    var = tmp_path_factory.mktemp("faults")
    settings = make_settings(database_url, broker_url, var, chunk_size=8)
    settings = settings.model_copy(update={"queue": f"{settings.queue}-faults"})
    migrate.upgrade(settings)
    hostname = f"faults-{os.getpid()}-{var.name}@localhost"
    log = var / "worker.log"
    proc = start_worker(settings_env(settings), ["minilm"], log, hostname=hostname)
    client = redis_client(broker_url)
    found = Faults(settings, Client(settings), proc, client, log, tmp_path_factory.mktemp("canaries"))
    try:
        wait_for_worker(create_app(settings), hostname, proc)
        yield found
    finally:
        code = stop_worker(proc)
        for key in [found.dead_letters, *found.keys, *(f"{found.model_queue}:{p}" for p in range(1, 10))]:
            client.delete(key)
        if FIGURES:
            print(f"\nfault figures ({database_url.split(':')[0]}):")
            for name, row in FIGURES.items():
                print(f"  {name:18} {json.dumps(row)}")
            FIGURES.clear()
    assert code == 0, f"SIGTERM should stop the worker with 0, got {code}; see {log}"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


# -- poison ----------------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def envelope(
    body: str,
    queue: str,
    content_type: str = "application/json",
    encoding: str = "utf-8",
    **headers: Any,
) -> dict[str, Any]:
    """A kombu/Celery envelope as Redis stores it, with the given (already encoded) body."""
    task_id = str(uuid.uuid4())
    return {
        "body": body,
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": {"lang": "py", "task": PROCESS_CHUNK, "id": task_id, "root_id": task_id, "parent_id": None,
                    "retries": 0, "timelimit": [None, None], "eta": None, "expires": None, **headers},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": str(uuid.uuid4())},
    }  # fmt: skip


def call(args: Any, kwargs: Any = None) -> str:
    return b64(json.dumps([args, {} if kwargs is None else kwargs, {"callbacks": None, "errbacks": None}]))


class Canary:
    """Unpickling this runs ``touch path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.path}",)


@dataclass(frozen=True)
class Kind:
    reason: str
    #: one raw message per copy: (copy number, queue, canary path) -> bytes or envelope
    make: Callable[[int, str, Path], bytes | dict[str, Any]]


def nowhere() -> str:
    return str(uuid.uuid4())  # a job id of the right form that no job has


KINDS: dict[str, Kind] = {
    "json-string-body": Kind(BODY_MALFORMED, lambda n, q, c: envelope(b64(json.dumps("hello")), q)),
    "non-json-envelope": Kind(ENVELOPE_NOT_JSON, lambda n, q, c: b"{this is not json" + bytes([n, 0xFF])),
    "invalid-base64": Kind(BODY_UNDECODABLE, lambda n, q, c: envelope("!!!not*base64", q)),
    "wrong-arity": Kind(BAD_ARGUMENTS, lambda n, q, c: envelope(call([nowhere()], {"chunk": n}), q)),
    "wrong-arg-types": Kind(BAD_JOB_ID, lambda n, q, c: envelope(call([n + 1, "x"]), q)),
    "non-uuid-job-id": Kind(BAD_JOB_ID, lambda n, q, c: envelope(call([["not-a-uuid\x00", "x" * 36, 7][n], 0]), q)),
    "idx-out-of-range": Kind(BAD_CHUNK_INDEX, lambda n, q, c: envelope(call([nowhere(), [2**40, -1, 2**70][n]]), q)),
    "unknown-task": Kind(NOT_A_CHUNK_TASK, lambda n, q, c: envelope(
        call([nowhere(), 0]), q, task=["os.system", "celery.accumulate", None][n])),
    "celery-refuses": Kind(REFUSED_BY_CELERY, lambda n, q, c: envelope(call([nowhere(), 0]), q, eta="not-a-date")),
    "pickle": Kind(CONTENT_REFUSED, lambda n, q, c: envelope(
        b64(pickle.dumps(Canary(c))), q, "application/x-python-serialize", "binary")),
    "yaml": Kind(CONTENT_REFUSED, lambda n, q, c: envelope(
        b64(f'!!python/object/apply:os.system ["touch {c}"]\n'), q, "application/x-yaml")),
    "unknown-content-type": Kind(CONTENT_REFUSED, lambda n, q, c: envelope(
        b64(json.dumps([[nowhere(), 0], {}, {}])), q, "application/x-sluice-unknown")),
}  # fmt: skip


def push(faults: Faults, name: str) -> list[bytes | dict[str, Any]]:
    canary = faults.canaries / name
    sent = []
    for n, key in enumerate(faults.keys):
        queue = key.split(":")[0]
        raw = KINDS[name].make(n, queue, canary)
        faults.redis.lpush(key, raw if isinstance(raw, bytes) else json.dumps(raw))
        sent.append(raw)
    return sent


def run_job(faults: Faults, texts: list[str]) -> tuple[str, float]:
    """Submit a real job and wait for it; checks every item done exactly once (none lost,
    duplicated or failed)."""
    start = time.monotonic()
    job = faults.client.submit("minilm", texts)
    info = faults.client.wait(job, timeout=JOB_BOUND_S, poll_s=0.05)
    took = time.monotonic() - start
    assert info.status is JobStatus.COMPLETED, info
    assert (info.total, info.done, info.failed) == (len(texts), len(texts), 0)
    with faults.client.engine.connect() as conn:
        rows = conn.execute(select(Item.item, Item.status, Item.attempts).where(Item.job_id == job)).all()
    assert sorted(r.item for r in rows) == list(range(len(texts)))
    assert {r.status for r in rows} == {ItemStatus.DONE.value} and {r.attempts for r in rows} == {1}
    assert [r["item"] for r in faults.client.results(job)] == list(range(len(texts)))
    return job, took


# -- tests -----------------------------------------------------------------------------------


def test_baseline_job(faults: Faults) -> None:
    _, took = run_job(faults, [f"baseline document {i}" for i in range(ITEMS)])
    FIGURES["(no poison)"] = {"follow_up_job_s": round(took, 2)}


@pytest.mark.parametrize("name", list(KINDS))
def test_poison_is_dead_lettered_once_and_the_next_job_runs(faults: Faults, name: str) -> None:
    r, kind = faults.redis, KINDS[name]
    dead_before, lines_before = r.llen(faults.dead_letters), faults.drop_lines()
    sent = push(faults, name)
    n = len(sent)
    dropped_s = wait_until(
        lambda: r.llen(faults.dead_letters) - dead_before >= n, DROP_BOUND_S, f"{name} dead-lettered"
    )
    _, job_s = run_job(faults, [f"{name} follow-up {i}" for i in range(ITEMS)])

    assert faults.worker.poll() is None, "the worker died"
    records = [json.loads(e) for e in r.lrange(faults.dead_letters, 0, r.llen(faults.dead_letters) - dead_before - 1)]
    FIGURES[name] = {"injected": n, "dead_lettered": len(records), "lost": max(0, n - len(records)),
                     "duplicated": max(0, len(records) - n), "requeued": faults.queued(),
                     "drop_s": round(dropped_s, 2), "follow_up_job_s": round(job_s, 2)}  # fmt: skip
    assert len(records) == n, "each poison message is dead-lettered exactly once"
    assert {rec["reason"] for rec in records} == {kind.reason}, records
    assert sorted(rec["queue"] for rec in records) == sorted([faults.model_queue] * 2 + [faults.settings.queue])
    assert all(rec["raw"] and rec["at"] and rec["detail"] for rec in records)
    assert faults.queued() == 0, "nothing requeued"
    tags = [m["properties"]["delivery_tag"] for m in sent if isinstance(m, dict)]
    assert not any(r.hexists("unacked", t) for t in tags), "nothing left unacked for redelivery"
    assert faults.drop_lines() - lines_before == n, "one log line per dropped message, no loop"
    assert not (faults.canaries / name).exists(), "something deserialised the payload"


def test_a_flood_of_every_kind_does_not_starve_real_work(faults: Faults) -> None:
    """Every kind three times over, queued ahead of a real job: the job is not held up by a loop."""
    r = faults.redis
    dead_before = r.llen(faults.dead_letters)
    n = sum(len(push(faults, name)) for name in KINDS)
    _, job_s = run_job(faults, [f"flood follow-up {i}" for i in range(ITEMS)])
    wait_until(lambda: r.llen(faults.dead_letters) - dead_before >= n, DROP_BOUND_S, "flood dead-lettered")
    assert r.llen(faults.dead_letters) - dead_before == n and faults.queued() == 0
    assert faults.worker.poll() is None
    assert not any((faults.canaries / name).exists() for name in KINDS)
    FIGURES["flood (all kinds)"] = {"injected": n, "dead_lettered": n, "follow_up_job_s": round(job_s, 2)}


def test_a_worker_whose_loop_ends_on_its_own_exits_non_zero(broker_url: str, tmp_path: Path) -> None:
    """Item 4 with a real process: Celery's loop ending without SIGTERM/SIGINT (here a remote
    shutdown command; before, also "Unrecoverable error") is a failure, never exit code 0."""
    settings = make_settings(f"sqlite:///{tmp_path / 'exit.db'}", broker_url, tmp_path)
    settings = settings.model_copy(update={"queue": f"{settings.queue}-exit"})
    migrate.upgrade(settings)
    hostname = f"exit-{os.getpid()}-{tmp_path.name}@localhost"
    proc = start_worker(settings_env(settings), [], tmp_path / "worker.log", hostname=hostname)
    try:
        app = create_app(settings)
        wait_for_worker(app, hostname, proc)
        app.control.shutdown(destination=[hostname])
        wait_until(lambda: proc.poll() is not None, 60, "the worker to stop")
    finally:
        stop_worker(proc)
    assert proc.returncode == 1, (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert "stopped on its own" in (tmp_path / "worker.log").read_text(errors="replace")
