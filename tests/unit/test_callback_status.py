"""The callback line of ``sluice status``: where a job's webhook delivery stands, no query string shown."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from sluice.data_commands import callback_line
from sluice.ledger.webhooks import DeliveryInfo
from sluice.status import DeliveryStatus

AT = datetime(2026, 11, 29, 2, 0, 5, tzinfo=UTC)
URL = "https://hooks.example.com/sluice?token=s3cr3t"


def info(status: DeliveryStatus, attempts: int, code: int | None = None, error: str | None = None) -> DeliveryInfo:
    return DeliveryInfo(job_id="j", url=URL, status=status, attempts=attempts, next_attempt_at=AT,
                        last_status_code=code, last_error=error, delivered_at=AT, created_at=AT)  # fmt: skip


def test_each_state_says_what_happened_and_what_comes_next() -> None:
    assert callback_line(info(DeliveryStatus.PENDING, 0)) == (
        "pending to https://hooks.example.com/sluice; next attempt at 2026-11-29 02:00:05Z"
    )
    assert callback_line(info(DeliveryStatus.PENDING, 2, 500, "HTTP 500 Internal Server Error")) == (
        "pending to https://hooks.example.com/sluice after 2 attempts; last: HTTP 500 Internal Server Error; "
        "next attempt at 2026-11-29 02:00:05Z"
    )
    assert callback_line(info(DeliveryStatus.DELIVERED, 1, 200)) == (
        "delivered to https://hooks.example.com/sluice (1 attempt, HTTP 200) at 2026-11-29 02:00:05Z"
    )
    assert callback_line(info(DeliveryStatus.FAILED, 3, None, "connection refused")) == (
        "failed to reach https://hooks.example.com/sluice after 3 attempts; last: connection refused"
    )


def test_times_are_shown_in_utc_whatever_zone_the_database_answers_in() -> None:
    row = info(DeliveryStatus.DELIVERED, 1, 204)
    berlin = replace(row, delivered_at=AT.astimezone(timezone(timedelta(hours=1))))
    assert callback_line(berlin).endswith("(1 attempt, HTTP 204) at 2026-11-29 02:00:05Z")
    naive = replace(row, delivered_at=AT.replace(tzinfo=None))  # SQLite: naive, stored in UTC
    assert callback_line(naive).endswith("at 2026-11-29 02:00:05Z")
