"""The ``workers`` table: each worker process's row, written by its presence reporter and read by
routing, recovery and ``sluice workers``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from sluice.clock import as_utc, utcnow
from sluice.db import workers_table
from sluice.ledger.base import LedgerBase
from sluice.routing import STALE_AFTER_BEATS, WorkerRow
from sluice.status import WorkerStatus

workers = workers_table


class WorkersLedger(LedgerBase):
    def upsert_worker(self, hostname: str, values: dict[str, Any]) -> None:
        """Write a worker's row (update, else insert; a racing insert of the same row turns into an update)."""
        with self.engine.begin() as conn:
            if conn.execute(update(workers).where(workers.c.hostname == hostname).values(**values)).rowcount:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(workers).values(hostname=hostname, **values))
        except IntegrityError:  # inserted meanwhile by another writer of this row
            with self.engine.begin() as conn:
                conn.execute(update(workers).where(workers.c.hostname == hostname).values(**values))

    def load_workers(self, include_stale: bool = False) -> list[WorkerRow]:
        """Workers by hostname; only live ones (fresh heartbeat, not stopped) unless ``include_stale``."""
        cutoff = utcnow() - timedelta(seconds=STALE_AFTER_BEATS * self.heartbeat_seconds)
        with self.engine.connect() as conn:
            rows = conn.execute(select(workers).order_by(workers.c.hostname)).all()
        found = []
        for r in rows:
            status, beat = WorkerStatus(r.status), as_utc(r.heartbeat_at)
            live = status is not WorkerStatus.STOPPED and beat >= cutoff
            if live or include_stale:
                found.append(WorkerRow(
                    r.hostname, r.pid, r.device, tuple(r.queues or ()), tuple(r.models or ()),
                    tuple(r.evictions or ()), r.memory_budget, status, as_utc(r.started_at), beat, live, r.metrics,
                ))  # fmt: skip
        return found
