"""``python -m bench.submit_costs``: what one single-document submit costs, piece by piece.

A backend sending one document per job pays these per job, on the producer's CPU: the job's
transaction (job, item and chunk rows), the live-worker read that routing needs, the Celery
publish, and the ``enqueued_at`` update after it. The whole submit is timed, then each piece
alone (wall and CPU milliseconds, mean over ``--n`` calls) against SQLite and, when reachable,
PostgreSQL; messages go to a scratch queue that no worker reads and that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from bench.stack import databases, find_broker
from producer.client import Client
from sluice import migrate
from sluice.celery_app import PROCESS_CHUNK
from sluice.registry import BUNDLED_REGISTRY
from sluice.settings import Settings


def timed(label: str, n: int, fn: Callable[[int], object]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {label:<34} {1000 * wall / n:6.2f} ms wall {1000 * cpu / n:6.2f} ms cpu", flush=True)


def measure(db: str, url: str, broker: str, var: Path, n: int) -> None:
    queue = f"submit-costs-{uuid.uuid4().hex[:6]}"
    settings = Settings(broker_url=broker, models_file=BUNDLED_REGISTRY, var_dir=var, queue=queue, database_url=url)
    migrate.upgrade(settings)
    client = Client(settings)
    client.submit("minilm", ["warm-up"])
    print(f"{db}:")
    timed("whole submit (one document)", n, lambda i: client.submit("minilm", [f"document {i}"]))
    sent: list[tuple[str, list[int], int, str]] = []
    client.dispatcher.send = lambda job_id, chunks, priority, model: sent.append((job_id, chunks, priority, model))  # type: ignore[method-assign,assignment,misc,func-returns-value]
    timed("submit without enqueue", n, lambda i: client.submit("minilm", [f"document {i}"]))
    timed("live workers (routing)", n, lambda i: client.workers())
    celery = client.dispatcher.app
    timed("send_task", n, lambda i: celery.send_task(PROCESS_CHUNK, args=[sent[i][0], 0], queue=queue))

    timed("enqueued_at update", n, lambda i: client.ledger.mark_sent(sent[i][0], [0], queue))
    redis.Redis.from_url(broker).delete(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="calls per piece")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        broker = find_broker(var)
        for db, url in databases(var).items():
            measure(db, url, broker, var, args.n)


if __name__ == "__main__":
    main()
