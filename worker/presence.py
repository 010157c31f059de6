"""A worker's row in the ``workers`` table: who it is, what it consumes and which models it holds.

The row is written at start, after every model load or eviction and by a heartbeat thread every
``SLUICE_HEARTBEAT_SECONDS``; a clean exit marks it stopped. Producers route jobs by these rows
(:mod:`sluice.routing`) and ``sluice workers`` prints them; a worker that died without a word is
recognised by its heartbeat going stale.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from sluice.clock import utcnow
from sluice.ledger import Ledger
from sluice.status import WorkerStatus

log = logging.getLogger("sluice.worker")

Snapshot = Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


class Presence:
    """Reports one worker process; :meth:`report` is safe from the task thread and the heartbeat."""

    def __init__(
        self, ledger: Ledger, hostname: str, device: str, queues: list[str], budget: int | None,
        heartbeat_seconds: float, snapshot: Snapshot, on_beat: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.ledger = ledger
        self.hostname = hostname
        self.static = {"pid": os.getpid(), "device": device, "queues": list(queues), "memory_budget": budget,
                       "started_at": utcnow()}  # fmt: skip
        self.heartbeat_seconds = heartbeat_seconds
        self.snapshot = snapshot
        self.on_beat = on_beat
        self.status = WorkerStatus.STARTING
        self._lock = threading.Lock()  # one write at a time, so an older snapshot never lands last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the first row and start the heartbeat thread."""
        self.report()
        self._thread = threading.Thread(target=self._beat, name="sluice-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and mark the row stopped: producers stop routing to this worker at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_seconds + 5)
        self.report(WorkerStatus.STOPPED)

    def report(self, status: WorkerStatus | None = None) -> None:
        """Rewrite the row from the current residency; a database error is logged, never raised."""
        with self._lock:
            self.status = status or self.status
            models, evictions = self.snapshot()
            values = {**self.static, "models": models, "evictions": evictions, "status": self.status.value,
                      "heartbeat_at": utcnow()}  # fmt: skip
            try:
                self.ledger.upsert_worker(self.hostname, values)
            except Exception as exc:  # a database blip must not take the worker down
                log.warning("could not report worker %s: %s", self.hostname, exc)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self.report()
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception as exc:  # a database blip must not stop the heartbeat
                    log.warning("heartbeat of %s: %s", self.hostname, exc)
