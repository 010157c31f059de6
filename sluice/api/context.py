"""What every route needs, made once per app: settings, the producer client, the ledger.

The API keeps no state of its own: everything lives in the database and Redis, so several API
processes can serve the same deployment behind a load balancer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from producer.client import Client
from sluice.clock import as_utc
from sluice.errors import JobNotFoundError
from sluice.ledger import JobInfo, Ledger
from sluice.settings import Settings


@dataclass
class Context:
    settings: Settings
    client: Client
    ledger: Ledger
    #: ``sluice api --no-auth``: every caller is an anonymous admin (loopback hosts only)
    no_auth: bool = False

    @classmethod
    def create(cls, settings: Settings, no_auth: bool = False) -> Context:
        client = Client(settings)
        return cls(settings, client, client.ledger, no_auth)

    def owned_job(self, job_id: str, sees: str | None, explain: bool = False) -> JobInfo:
        """The job, if the caller may see it (``sees`` None: any owner's); 404 otherwise, exactly as
        for a job that does not exist, so another owner's job ids reveal nothing."""
        info = None
        if _uuid_like(job_id):
            with contextlib.suppress(JobNotFoundError):
                info = self.client.status(job_id, explain=explain)
        if info is None or (sees is not None and info.owner != sees):
            raise JobNotFoundError(f"no job {job_id!r}; GET /jobs lists yours")
        return info


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


#: a route parameter: the app's context
Ctx = Annotated[Context, Depends(get_ctx)]


def plausible_id(value: str | None) -> bool:
    """Whether ``value`` could be a Sluice id (file-..., batch_..., a UUID): 1-64 letters, digits, ``-``
    and ``_``. Anything else is not looked up, so odd text (NUL bytes) never reaches the database."""
    return value is not None and 0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def _uuid_like(value: str) -> bool:
    """Job ids are UUIDs; anything else is not looked up (and cannot reach the database as odd text)."""
    return len(value) == 36 and all(c in "0123456789abcdef-" for c in value.lower())


def unix(moment: datetime | None) -> int | None:
    """Seconds since the epoch (SQLite returns naive UTC datetimes, PostgreSQL aware ones)."""
    return None if moment is None else int(as_utc(moment).timestamp())


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()
