"""What every part of the ledger holds: the engine of one database and the limits it enforces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.db import get_engine

if TYPE_CHECKING:
    from typing import Self

    from sluice.settings import Settings


class LedgerBase:
    """One database's ledger; cheap to create (engines are shared per URL within a process)."""

    def __init__(
        self, database_url: str, max_attempts: int = 3, lease_seconds: int = 900, heartbeat_seconds: float = 10.0
    ) -> None:
        self.engine = get_engine(database_url)
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds

    @classmethod
    def for_settings(cls, settings: Settings) -> Self:
        """The ledger of ``settings``' database, with its attempt, lease and heartbeat limits."""
        return cls(settings.resolved_database_url, settings.max_attempts, settings.lease_seconds,
                   settings.heartbeat_seconds)  # fmt: skip
