"""Bring up what the end-to-end measurements need: broker, databases, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select, text

from producer.client import Client
from sluice import migrate
from sluice.broker import start_embedded
from sluice.celery_app import create_app
from sluice.clock import utcnow
from sluice.process import start_worker, stop_worker, wait_for_worker
from sluice.settings import Settings

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: The bench worker rewrites its row this often, so that its token totals can be read right after a run.
HEARTBEAT_S = 1.0


def find_broker(var: Path) -> str:
    url = os.environ.get("SLUICE_BROKER_URL") or LOCAL_REDIS
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
        return url
    except (redis.RedisError, OSError):
        return start_embedded(var)


def databases(var: Path) -> dict[str, str]:
    """SQLite always; PostgreSQL when reachable (a fresh bench database)."""
    dbs = {"sqlite": f"sqlite:///{var / 'bench.db'}"}
    (var / "bench.db").unlink(missing_ok=True)
    try:
        admin = create_engine(os.environ.get("SLUICE_BENCH_POSTGRES_URL", LOCAL_POSTGRES), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "sluice_bench" WITH (FORCE)'))
            conn.execute(text('CREATE DATABASE "sluice_bench"'))
        dbs["postgresql"] = admin.url.set(database="sluice_bench").render_as_string(hide_password=False)
    except Exception as exc:
        print(f"PostgreSQL not reachable, skipping it: {str(exc).splitlines()[0]}")
    return dbs


@contextmanager
def sluice_worker(settings: Settings, models: list[str], threads: int) -> Iterator[Client]:
    migrate.upgrade(settings)
    env = {
        "SLUICE_DATABASE_URL": settings.resolved_database_url, "SLUICE_BROKER_URL": settings.broker_url or "",
        "SLUICE_MODELS_FILE": str(settings.models_file), "SLUICE_QUEUE": settings.queue,
        "SLUICE_TORCH_THREADS": str(threads), "SLUICE_MAX_BATCH_TOKENS": str(settings.batch_tokens("cpu")),
        "SLUICE_CHUNK_SIZE": str(settings.chunk_size), "SLUICE_VAR_DIR": str(settings.var_dir),
        "SLUICE_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
    }  # fmt: skip
    host = f"bench-{uuid.uuid4().hex[:6]}@localhost"
    proc = start_worker(env, models, settings.var_dir / "bench-worker.log", hostname=host)
    try:
        wait_for_worker(create_app(settings), host, proc)
        yield Client(settings)
    finally:
        stop_worker(proc)


def token_totals(client: Client, model: str) -> tuple[int, int]:
    """(real, padded) tokens of ``model``'s forward passes so far, over the live workers, as their
    rows report them once every row has been rewritten after this call."""
    since = utcnow() + timedelta(seconds=0.2)  # the run's last batch is recorded just after its commit
    deadline = time.monotonic() + 10 * HEARTBEAT_S
    rows = client.workers()
    while any(r.heartbeat_at < since for r in rows) and time.monotonic() < deadline:
        time.sleep(HEARTBEAT_S / 5)
        rows = client.workers()
    models = [m for r in rows for m in r.models if m["model"] == model]
    return sum(m.get("real_tokens", 0) for m in models), sum(m.get("padded_tokens", 0) for m in models)


@contextmanager
def naive_worker(broker: str, database_url: str, model_path: str, kind: str, threads: int, var: Path) -> Iterator[str]:
    queue = f"naive-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "NAIVE_BROKER_URL": broker, "NAIVE_DATABASE_URL": database_url, "NAIVE_QUEUE": queue,
           "NAIVE_MODEL_PATH": model_path, "NAIVE_KIND": kind, "NAIVE_THREADS": str(threads)}  # fmt: skip
    log = (var / "naive-worker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.naive_celery", "worker", "--pool=solo", "-Q", queue,
         "--hostname", f"{queue}@localhost", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        from bench.naive_celery import app

        app.conf.broker_url = broker
        wait_for_worker(app, f"{queue}@localhost", proc)
        yield queue
    finally:
        stop_worker(proc)


def run_naive(queue: str, database_url: str, docs: list[str]) -> float:
    """Seconds from the first send to the last row committed by the one-task-per-document worker."""
    from bench.naive_celery import app, meta, results

    engine = create_engine(database_url)
    meta.create_all(engine)
    job = str(uuid.uuid4())
    start = time.perf_counter()
    for i, doc in enumerate(docs):
        app.send_task("naive.infer", args=[job, i, doc], queue=queue)
    while True:
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(results).where(results.c.job == job)).scalar_one()
        if n >= len(docs):
            return time.perf_counter() - start
        time.sleep(0.05)
