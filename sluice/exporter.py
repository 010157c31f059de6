"""``sluice metrics``: the cluster-wide Prometheus exporter.

A worker's /metrics says what that worker did; the figures of the whole deployment (jobs and
items by status, queue depth per queue and priority, live workers, the oldest queued chunk) come
from the database and Redis, read at scrape time by :class:`ClusterCollector` (at most once per
``min_interval`` seconds, however many Prometheus servers scrape it). A source that does not
answer is reported as ``sluice_source_up{source} 0`` and its figures are left out, never faked.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sluice.cluster import Snapshot, broker_client, take_snapshot
from sluice.ledger import Ledger
from sluice.settings import Settings

log = logging.getLogger("sluice.exporter")


class ClusterCollector(Collector):
    """Gauges computed from one :class:`~sluice.cluster.Snapshot` per scrape (cached ``min_interval`` s)."""

    def __init__(self, settings: Settings, ledger: Ledger, client: Any, min_interval: float = 1.0) -> None:
        self.settings, self.ledger, self.client = settings, ledger, client
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot, float] | None = None

    def snapshot(self) -> tuple[Snapshot, float]:
        """A reading at most ``min_interval`` old, and the seconds it took."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.min_interval:
                snap = take_snapshot(self.settings, self.ledger, self.client)
                self._cached = (now, snap, time.monotonic() - now)
            return self._cached[1], self._cached[2]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap, seconds = self.snapshot()
        up = GaugeMetricFamily("sluice_source_up", "1 when the source answered this scrape, else 0.", labels=["source"])
        for source in ("database", "broker"):
            up.add_metric([source], 0.0 if source in snap.errors else 1.0)
        yield up
        yield GaugeMetricFamily("sluice_exporter_collect_seconds", "Seconds the last reading took.", value=seconds)
        if snap.stats is not None:
            yield from _database_gauges(snap)
        if snap.depths is not None:
            yield from _broker_gauges(snap)


def _database_gauges(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
    assert snap.stats is not None
    jobs = GaugeMetricFamily("sluice_jobs", "Jobs by status.", labels=["status"])
    for status, n in sorted(snap.stats.jobs.items()):
        jobs.add_metric([status], n)
    yield jobs
    items = GaugeMetricFamily("sluice_items", "Items by status (from the jobs' counters).", labels=["status"])
    for status, n in sorted(snap.stats.items.items()):
        items.add_metric([status], n)
    yield items
    chunks = GaugeMetricFamily("sluice_open_chunks", "Queued and running chunks of active jobs.",
                               labels=["queue", "model", "status"])  # fmt: skip
    grouped: dict[tuple[str, str, str], int] = {}
    for g in snap.stats.chunks:
        key = (g.queue or "unsent", g.model, g.status)
        grouped[key] = grouped.get(key, 0) + g.chunks
    for key, n in sorted(grouped.items()):
        chunks.add_metric(list(key), n)
    yield chunks
    yield GaugeMetricFamily("sluice_workers_live", "Workers with a fresh heartbeat.", value=len(snap.live_workers))
    yield GaugeMetricFamily("sluice_oldest_queued_chunk_age_seconds",
                            "Seconds the longest-waiting queued chunk has waited (0: none).",
                            value=snap.oldest_queued_age())  # fmt: skip


def _broker_gauges(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
    assert snap.depths is not None
    depth = GaugeMetricFamily("sluice_queue_depth", "Messages waiting in Redis, by queue and priority (9 first).",
                              labels=["queue", "priority"])  # fmt: skip
    for (queue, priority), n in sorted(snap.depths.items()):
        depth.add_metric([queue, str(priority)], n)
    yield depth
    yield GaugeMetricFamily("sluice_broker_unacked_messages", "Messages delivered to a worker and not yet acked.",
                            value=snap.unacked or 0)  # fmt: skip
    yield GaugeMetricFamily("sluice_dead_letter_messages", "Malformed messages kept in the dead-letter list.",
                            value=snap.dead_letters or 0)  # fmt: skip


def run_exporter(settings: Settings, host: str, port: int) -> int:
    """Serve the cluster gauges (and this process's own) until SIGTERM or SIGINT."""
    from sluice.broker import redacted
    from sluice.metrics import new_registry, serve

    registry = new_registry()
    ledger = Ledger.for_settings(settings)
    registry.register(ClusterCollector(settings, ledger, broker_client(settings)))
    server = serve(registry, port, host)
    database, broker = redacted(settings.resolved_database_url), redacted(settings.broker_url or "(private Redis)")
    log.info("exporting cluster metrics of database %s and broker %s on http://%s:%d/metrics", database, broker, host,
             port)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    log.info("exporter stopped")
    return 0
