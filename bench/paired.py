"""``python -m bench.paired REV [REV ...]``: the bulk MiniLM row (one 4,000-document job, submit to
last commit) of several revisions, run alternately in the same session, medians of ``--runs``.

Each revision is checked out in its own git worktree under a temporary directory and runs its own
code (worker, client, migrations) against its own fresh database, on the same Redis, with the
same thread count, so that a refactor can be shown not to slow the hot path while the machine's
speed drifts. Usage: ``python -m bench.paired 014b8df HEAD --database postgresql --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CREATED: list[str] = []  # PostgreSQL databases to drop at the end

# Runs inside the revision's worktree: its own sluice, producer and worker packages.
ONE_RUN = r"""
import json, os, sys, time, uuid
from pathlib import Path
from producer.client import Client
from sluice import migrate
from sluice.celery_app import create_app
from sluice.corpus import stdlib_documents
from sluice.process import start_worker, stop_worker, wait_for_worker
from sluice.settings import Settings

db, broker, var, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
settings = Settings(database_url=db, broker_url=broker, var_dir=var, queue=f"paired-{uuid.uuid4().hex[:6]}")
migrate.upgrade(settings)
env = {"SLUICE_DATABASE_URL": db, "SLUICE_BROKER_URL": broker, "SLUICE_QUEUE": settings.queue,
       "SLUICE_VAR_DIR": str(var), "SLUICE_TORCH_THREADS": "2"}
host = f"paired-{os.getpid()}@bench"
proc = start_worker(env, ["minilm"], var / "worker.log", hostname=host)
try:
    wait_for_worker(create_app(settings), host, proc)
    docs = stdlib_documents(limit=n)
    client = Client(settings)
    start = time.perf_counter()
    job = client.submit("minilm", docs)
    info = client.wait(job, poll_s=0.1)
    print(json.dumps({"docs_s": info.total / (time.perf_counter() - start), "done": info.done}))
finally:
    stop_worker(proc)
"""


def worktree(rev: str, base: Path) -> Path:
    path = base / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)  # fmt: skip
    return path


def database(kind: str, base: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{base / uuid.uuid4().hex}.db"
    from sqlalchemy import create_engine, text

    name = f"paired_{uuid.uuid4().hex[:8]}"
    with create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    CREATED.append(name)
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_databases() -> None:
    if not CREATED:
        return
    from sqlalchemy import create_engine, text

    with create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT").connect() as conn:
        for name in CREATED:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def one_run(tree: Path, db: str, broker: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as var:
        env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        cmd = [sys.executable, "-c", ONE_RUN, db, broker, var, str(n)]
        out = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True, env=env)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["docs_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        trees = {rev: worktree(rev, base) for rev in args.revs}
        rates: dict[str, list[float]] = {rev: [] for rev in args.revs}
        try:
            for n in range(args.runs):
                for rev, tree in trees.items():  # alternate: drift hits every revision alike
                    rates[rev].append(one_run(tree, database(args.database, base), args.broker, args.docs))
                    print(f"run {n + 1} {rev}: {rates[rev][-1]:.1f} docs/s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
            drop_databases()
    first = statistics.median(rates[args.revs[0]])
    for rev, found in rates.items():
        med = statistics.median(found)
        print(f"{rev:12} median {med:6.1f} docs/s  {med / first:5.2f}x {args.revs[0]}  runs {found}")


if __name__ == "__main__":
    main()
