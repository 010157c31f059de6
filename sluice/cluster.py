"""One reading of the whole deployment, from the database and Redis: what ``sluice metrics`` exports
and ``sluice top`` draws.

Redis queue depth is read key by key: kombu keeps one list per queue and priority step, named
``<queue>`` for step 0 and ``<queue>:<step>`` for the others (``sep=":"`` in
:mod:`sluice.celery_app`); Sluice priority ``p`` (9 = most urgent) is step ``9 - p``. The queues
read are the shared queue, every live worker's queues and every queue an open chunk was sent to,
so a queue nobody consumes any more still shows its backlog.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sluice.celery_app import PRIORITY_LEVELS, redis_priority
from sluice.clock import utcnow
from sluice.ledger import ClusterStats, Ledger, RunningChunk
from sluice.routing import WorkerRow
from sluice.settings import Settings

log = logging.getLogger("sluice.cluster")

#: kombu's separator between a queue and its priority step (``broker_transport_options["sep"]``).
PRIORITY_SEP = ":"
#: kombu's hash of delivered, unacknowledged messages (its default ``unacked_key``).
UNACKED_KEY = "unacked"
#: The dead-letter list of dropped malformed messages (:mod:`worker.messages`): ``<SLUICE_QUEUE>:dead-letter``.
DEAD_LETTER_SUFFIX = ":dead-letter"
#: Seconds a Redis command may take before the reading reports the broker down.
REDIS_TIMEOUT = 5.0
#: Sources that failed the last reading (logged once when they fail, once when they are back).
_down: set[str] = set()


def priority_key(queue: str, priority: int) -> str:
    """The Redis list holding ``queue``'s messages of Sluice ``priority``."""
    step = redis_priority(priority)
    return queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"


@dataclass
class Snapshot:
    """The database's figures and Redis's depths at one moment; a source that failed is None."""

    taken_at: float = field(default_factory=time.time)
    stats: ClusterStats | None = None
    workers: list[WorkerRow] = field(default_factory=list)
    running: list[RunningChunk] = field(default_factory=list)
    #: messages waiting per (queue, Sluice priority)
    depths: dict[tuple[str, int], int] | None = None
    unacked: int | None = None
    dead_letters: int | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def live_workers(self) -> list[WorkerRow]:
        return [w for w in self.workers if w.live]

    def oldest_queued_age(self) -> float:
        """Seconds the longest-waiting queued chunk has waited; 0 when none waits."""
        if self.stats is None or self.stats.oldest_queued is None:
            return 0.0
        return max(0.0, (utcnow() - self.stats.oldest_queued).total_seconds())

    def queue_depth(self, queue: str) -> int | None:
        if self.depths is None:
            return None
        return sum(n for (q, _), n in self.depths.items() if q == queue)


def known_queues(settings: Settings, snapshot: Snapshot) -> list[str]:
    """The shared queue, the queues live workers consume, and those open chunks were sent to."""
    found = {settings.queue}
    found.update(q for w in snapshot.live_workers for q in w.queues)
    if snapshot.stats is not None:
        found.update(g.queue for g in snapshot.stats.chunks if g.queue)
    return sorted(found)


def broker_client(settings: Settings) -> Any:
    """A redis-py client for the broker whose commands give up after :data:`REDIS_TIMEOUT`."""
    from sluice.broker import broker_url, redis_client

    client = redis_client(broker_url(settings), settings)
    kwargs = client.connection_pool.connection_kwargs
    kwargs.setdefault("socket_timeout", REDIS_TIMEOUT)
    kwargs.setdefault("socket_connect_timeout", REDIS_TIMEOUT)
    return client


def read_depths(client: Any, queues: list[str]) -> dict[tuple[str, int], int]:
    """Messages waiting per (queue, priority), read in one round trip."""
    keys = [(q, p) for q in queues for p in range(PRIORITY_LEVELS)]
    pipe = client.pipeline(transaction=False)
    for q, p in keys:
        pipe.llen(priority_key(q, p))
    return {key: int(n) for key, n in zip(keys, pipe.execute(), strict=True)}


def take_snapshot(settings: Settings, ledger: Ledger, client: Any, running: bool = False) -> Snapshot:
    """Read the database (jobs, items, open chunks, workers; ``running``: held chunks too), then Redis."""
    snap = Snapshot()
    try:
        snap.stats = ledger.cluster_stats()
        snap.workers = ledger.load_workers(include_stale=False)
        if running:
            snap.running = ledger.running_chunks()
    except Exception as exc:  # reported as sluice_source_up{source="database"} 0, and logged
        snap.errors["database"] = f"{type(exc).__name__}: {exc}"
    try:
        snap.depths = read_depths(client, known_queues(settings, snap))
        snap.unacked = int(client.hlen(UNACKED_KEY))
        snap.dead_letters = int(client.llen(settings.queue + DEAD_LETTER_SUFFIX))
    except Exception as exc:
        snap.errors["broker"] = f"{type(exc).__name__}: {exc}"
    _report(snap.errors)
    return snap


def _report(errors: dict[str, str]) -> None:
    """One log line when a source stops answering and one when it answers again, not one per reading."""
    for source in ("database", "broker"):
        if source in errors and source not in _down:
            log.warning("cluster reading: the %s does not answer: %s", source, errors[source])
            _down.add(source)
        elif source not in errors and source in _down:
            log.warning("cluster reading: the %s answers again", source)
            _down.discard(source)
