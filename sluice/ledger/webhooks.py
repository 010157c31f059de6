"""The job callbacks' outbox (``webhook_deliveries``): every statement over it.

A row is written by :func:`queue_callbacks` in the transaction that ends its job (completed,
failed or cancelled), so a callback is never lost to a crash between the job's end and the POST.
Deliverers (:mod:`sluice.webhooks`) read due rows, claim one with a conditional update before
posting (``attempts`` counted, ``next_attempt_at`` pushed past the POST's time: a lease), and
record the outcome under that claim. Two deliverers never both hold a claim; one that dies while
posting leaves the row due again when its lease runs out, so a receiver may, rarely, see one job
twice and should dedupe on the job id.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, literal, select, update
from sqlalchemy.types import DateTime, Integer, String

from sluice.db import jobs_table, webhook_deliveries_table
from sluice.ledger.base import LedgerBase
from sluice.status import DeliveryStatus

jobs = jobs_table
deliveries = webhook_deliveries_table

#: Longest ``last_error`` stored (an error page's text is cut).
ERROR_CHARS = 500


def queue_callbacks(conn: Connection, job_ids: Collection[str], now: datetime) -> None:
    """Write a pending delivery, due now, for each of these jobs that names a ``callback_url``;
    called in the transaction that ends them (each job ends once, so each gets one row)."""
    if not job_ids:
        return
    source = select(
        jobs.c.id, jobs.c.callback_url, literal(DeliveryStatus.PENDING.value, String()), literal(0, Integer()),
        literal(now, DateTime(timezone=True)), literal(now, DateTime(timezone=True)),
    ).where(jobs.c.id.in_(list(job_ids)), jobs.c.callback_url.is_not(None))  # fmt: skip
    names = ["job_id", "url", "status", "attempts", "next_attempt_at", "created_at"]
    conn.execute(insert(deliveries).from_select(names, source))


@dataclass(frozen=True)
class DueDelivery:
    """A pending delivery as read, before its claim: ``attempts`` made so far."""

    job_id: str
    url: str
    attempts: int


@dataclass(frozen=True)
class DeliveryInfo:
    """A delivery's row: what ``sluice status`` and the tests read."""

    job_id: str
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class WebhooksLedger(LedgerBase):
    def due_webhooks(self, now: datetime, limit: int) -> list[DueDelivery]:
        """Pending deliveries due by ``now``, the longest-waiting first."""
        query = (
            select(deliveries.c.job_id, deliveries.c.url, deliveries.c.attempts)
            .where(deliveries.c.status == DeliveryStatus.PENDING.value, deliveries.c.next_attempt_at <= now)
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [DueDelivery(r.job_id, r.url, r.attempts) for r in conn.execute(query)]

    def claim_webhook(self, due: DueDelivery, now: datetime, until: datetime) -> bool:
        """Take a due delivery for one attempt: count it and hold the row until ``until``; False
        when another deliverer took it first (or it is no longer due)."""
        stmt = (
            update(deliveries)
            .where(
                deliveries.c.job_id == due.job_id,
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.attempts == due.attempts,
                deliveries.c.next_attempt_at <= now,
            )
            .values(attempts=due.attempts + 1, next_attempt_at=until)
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def record_webhook(
        self, job_id: str, attempt: int, status: DeliveryStatus, *, code: int | None, error: str | None,
        now: datetime, retry_at: datetime | None = None,
    ) -> bool:  # fmt: skip
        """Record attempt number ``attempt``'s outcome under its claim: ``delivered``, ``failed``
        for good, or ``pending`` again from ``retry_at``; False when the claim was lost (its lease
        ran out and another deliverer took the row)."""
        values: dict[str, Any] = {"status": status.value, "last_status_code": code,
                                  "last_error": error[:ERROR_CHARS] if error else None}  # fmt: skip
        if status is DeliveryStatus.DELIVERED:
            values["delivered_at"] = now
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        mine = (deliveries.c.job_id == job_id, deliveries.c.attempts == attempt,
                deliveries.c.status == DeliveryStatus.PENDING.value)  # fmt: skip
        stmt = update(deliveries).where(*mine).values(**values)
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def next_webhook_due(self) -> datetime | None:
        """When the soonest pending delivery is due (or its claim runs out); None when none is pending."""
        query = select(func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.status == DeliveryStatus.PENDING.value
        )
        with self.engine.connect() as conn:
            found: datetime | None = conn.execute(query).scalar_one_or_none()
        return found

    def webhook_delivery(self, job_id: str) -> DeliveryInfo | None:
        """The job's delivery row; None when it has none (no callback_url, or not ended yet)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.job_id == job_id)).one_or_none()
        if row is None:
            return None
        return DeliveryInfo(
            job_id=row.job_id, url=row.url, status=DeliveryStatus(row.status), attempts=row.attempts,
            next_attempt_at=row.next_attempt_at, last_status_code=row.last_status_code, last_error=row.last_error,
            delivered_at=row.delivered_at, created_at=row.created_at,
        )  # fmt: skip
