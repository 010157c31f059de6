"""Prometheus plumbing every Sluice process shares: registries, the /metrics server, and the
scheduler's metric (``sluice scheduler`` serves it on ``SLUICE_METRICS_PORT``).

Each process keeps its metrics in a registry of its own (:func:`new_registry`: process and
Python collectors included) rather than prometheus-client's global one, so several apps or hooks
in one interpreter (tests) never collide. Names follow Prometheus conventions (``_total``
counters, ``_seconds`` and ``_bytes`` units, prefix ``sluice_``); no label ever takes a job id or
another unbounded value. The full list is in the README's "Monitoring" section.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger("sluice.metrics")

# No `*_created` series next to every counter and histogram: they double the series count and no
# dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Outcomes of one scheduler tick: its job started, skipped (overlap policy, an empty source),
#: missed (past the catch-up window) or failed (the source or the submit raised).
SCHEDULE_OUTCOMES = ("started", "skipped", "missed", "failed")
#: Seconds buckets from a millisecond to ten minutes (forward passes, waits, database writes).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread; the server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)
    return server


def advertised(host: str, port: int) -> str:
    """``host:port`` as others reach it: this machine's name when listening on every address."""
    import socket

    return f"{socket.gethostname() if host in ('', '0.0.0.0', '::') else host}:{port}"


class SchedulerMetrics:
    """The scheduler's metric: ``sluice_schedule_ticks_total{outcome}``; :meth:`tick` counts one.

    A scheduler process builds one (``SchedulerMetrics()``), calls ``tick("started")`` and so on
    for each tick it records, and serves :attr:`registry` with :func:`serve`. Every
    outcome starts at 0, so a rate is defined before the first tick.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.ticks = Counter(
            "sluice_schedule_ticks", "Scheduler ticks by outcome: started, skipped, missed, failed.", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        for outcome in SCHEDULE_OUTCOMES:
            self.ticks.labels(outcome=outcome)

    def tick(self, outcome: str) -> None:
        """Count one tick; an outcome outside :data:`SCHEDULE_OUTCOMES` is refused (labels stay bounded)."""
        if outcome not in SCHEDULE_OUTCOMES:
            raise ValueError(f"schedule tick outcome {outcome!r} is not one of {', '.join(SCHEDULE_OUTCOMES)}")
        self.ticks.labels(outcome=outcome).inc()
