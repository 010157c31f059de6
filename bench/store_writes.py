"""``python -m bench.store_writes``: seconds for ``Ledger.write_results`` of 4,000 embeddings.

Batches of 64 and 128 items with 384-float embeddings, on SQLite and PostgreSQL
(``SLUICE_TEST_POSTGRES_URL``; a scratch database is created and dropped), comparing the
statement ``write_results`` uses with one executemany per outcome. Strategies run interleaved,
and the median of ``--runs`` is printed, because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from sqlalchemy import Connection, create_engine, insert, text

from sluice import migrate
from sluice.clock import utcnow
from sluice.db import Item, Job, get_engine
from sluice.families.base import ItemResult
from sluice.ledger import Ledger
from sluice.ledger import results as store_module
from sluice.settings import Settings

POSTGRES_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_databases(tmp: Path) -> Iterator[dict[str, str]]:
    """A migrated SQLite file and a migrated scratch PostgreSQL database."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    urls = {"sqlite": f"sqlite:///{tmp / 'bench.db'}", "postgresql": POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"}
    try:
        for url in urls.values():
            migrate.upgrade(Settings(database_url=url, var_dir=tmp))
        yield urls
    finally:
        get_engine(urls["postgresql"]).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_job(url: str, n: int) -> str:
    job = str(uuid.uuid4())
    with get_engine(url).begin() as conn:
        conn.execute(insert(Job.__table__).values(
            id=job, task="feature-extraction", model="minilm", params={}, status="running", priority=0,
            total_items=n, done_items=0, failed_items=0, created_at=utcnow()))  # fmt: skip
        conn.execute(insert(Item.__table__), [{"job_id": job, "item": i, "input": {"text": "x"},
                     "status": "pending", "attempts": 1} for i in range(n)])  # fmt: skip
    return job


def time_writes(url: str, embeddings: np.ndarray, batch: int) -> float:
    store = Ledger(url, max_attempts=3)
    job = new_job(url, len(embeddings))
    start = time.perf_counter()
    for lo in range(0, len(embeddings), batch):
        results = [ItemResult(item=i, embedding=embeddings[i], n_tokens=64, compute_ms=1.0)
                   for i in range(lo, min(lo + batch, len(embeddings)))]  # fmt: skip
        assert store.write_results({job: results}, "bench")[0] == len(results)
    return time.perf_counter() - start


def strategies() -> dict[str, Callable[[], AbstractContextManager[object]]]:
    """How PostgreSQL writes: as shipped, or one executemany per outcome (what SQLite does)."""

    def executemany(conn: Connection, rows: list[dict[str, Any]], worker: str | None, now: Any) -> object:
        return store_module._write_executemany(conn, rows, set())

    return {"write_results": nullcontext, "executemany": lambda: mock.patch.object(
        store_module, "_write_postgresql", executemany)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    embeddings = np.random.default_rng(0).standard_normal((args.items, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, scratch_databases(Path(tmp)) as urls:
        times: dict[tuple[str, int, str], list[float]] = {}
        for _ in range(args.runs):
            for backend, url in urls.items():
                for batch in (64, 128):
                    for name, strategy in strategies().items():
                        if backend == "sqlite" and name != "write_results":
                            continue  # SQLite always uses executemany
                        with strategy():
                            seconds = time_writes(url, embeddings, batch)
                        times.setdefault((backend, batch, name), []).append(seconds)
        for (backend, batch, name), runs in times.items():
            median = statistics.median(runs)
            print(f"{backend:10} batch {batch:3} {name:13} median {median:.3f}s  {args.items / median:7.0f} rows/s  "
                  f"runs {' '.join(f'{x:.3f}' for x in runs)}")  # fmt: skip


if __name__ == "__main__":
    main()
