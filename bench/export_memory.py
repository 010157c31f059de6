"""``python -m bench.export_memory --items 100000 1000000``: peak memory of a Parquet export.

For each N, fills a fresh SQLite database (migrated to head) with one finished
feature-extraction-like job of N items (384-float embeddings, a key, a label and score), by bulk
SQL straight into Sluice's tables, then runs ``sluice results JOB --format parquet -o FILE`` in a
subprocess and reports that process's peak resident set (``ru_maxrss`` of the child alone, from
``os.wait4``), its wall time and the file's size and row count. Flat memory means the peak stays
about the same from 100k to 1M items (it is the interpreter, its libraries and one page of rows).

``--format jsonl`` or ``csv`` measure those exports instead. Run the largest N last: it needs
about 2 GB of disk for the database and 1.5 GB for the file (under ``--dir``, default a temporary
directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from sluice import migrate
from sluice.settings import Settings

DIM = 384
#: Rows per executemany when filling (bounded memory while filling too).
FILL_ROWS = 20_000


def fill(db: Path, n: int) -> str:
    """A done job of ``n`` items with random unit embeddings in the SQLite file ``db``; its id."""
    job = str(uuid.uuid4())
    now = "2026-01-01 00:00:00.000000"
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=OFF")  # a scratch database: no rollback journal to write
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(
            "INSERT INTO jobs (id, task, model, params, priority, status, total_items, done_items, failed_items,"
            " created_at, started_at, finished_at) VALUES (?, 'feature-extraction', 'minilm', '{}', 0, 'completed',"
            " ?, ?, 0, ?, ?, ?)",
            (job, n, n, now, now, now),
        )
        rng = np.random.default_rng(0)
        for start in range(0, n, FILL_ROWS):
            count = min(FILL_ROWS, n - start)
            vectors = rng.standard_normal((count, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            blobs = vectors.astype("<f4")
            conn.executemany(
                "INSERT INTO items (job_id, item, key, input, status, attempts, embedding, n_tokens, finished_at)"
                " VALUES (?, ?, ?, '{\"text\": \"x\"}', 'done', 1, ?, 8, ?)",
                ((job, start + i, f"doc-{start + i}", blobs[i].tobytes(), now) for i in range(count)),
            )
        conn.commit()
    finally:
        conn.close()
    return job


def export(db: Path, job: str, out: Path, fmt: str, var: Path) -> tuple[int, float]:
    """Run ``sluice results`` in a child process; its peak RSS in bytes and its wall seconds."""
    env = {**os.environ, "SLUICE_DATABASE_URL": f"sqlite:///{db}", "SLUICE_VAR_DIR": str(var)}
    cmd = [sys.executable, "-m", "sluice.cli", "results", job, "--format", fmt, "-o", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return usage.ru_maxrss * 1024, seconds  # ru_maxrss is in KiB on Linux


def rows_in(out: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(out).metadata.num_rows)
    with out.open("rb") as fh:
        return sum(1 for _ in fh) - (fmt == "csv")


def run(n: int, fmt: str, root: Path) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"export-{n}-", dir=root))
    db = work / "bench.db"
    migrate.upgrade(Settings(database_url=f"sqlite:///{db}", var_dir=work))
    started = time.perf_counter()
    job = fill(db, n)
    filled = time.perf_counter() - started
    out = work / f"results.{fmt}"
    rss, seconds = export(db, job, out, fmt, work)
    assert rows_in(out, fmt) == n, "the export lost rows"
    size = out.stat().st_size
    for path in sorted(work.iterdir(), reverse=True):
        path.unlink()
    work.rmdir()
    return {"items": n, "fill_s": filled, "export_s": seconds, "peak_rss_mb": rss / 2**20, "file_mb": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000], help="job sizes, in order")
    parser.add_argument("--format", default="parquet", choices=["parquet", "jsonl", "csv"])
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: the system temp)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.gettempdir())
    print(f"sluice results JOB --format {args.format} -o FILE, {DIM}-float embeddings, SQLite", flush=True)
    print(f"{'items':>10} {'fill s':>8} {'export s':>9} {'peak RSS MB':>12} {'file MB':>9}", flush=True)
    for n in args.items:
        r = run(n, args.format, root)
        print(f"{n:>10,} {r['fill_s']:>8.1f} {r['export_s']:>9.1f} {r['peak_rss_mb']:>12.1f} {r['file_mb']:>9.1f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
