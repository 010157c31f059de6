"""Timestamps: everything Sluice stores is aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime: SQLite hands back naive ones (everything Sluice writes is UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
