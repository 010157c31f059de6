"""The job and chunk state machine, each transition written once.

======  =====================  =======================================================
what    from -> to             when (function)
======  =====================  =======================================================
job     (new) -> queued        submitted with at least one valid item (jobs.create_job)
job     (new) -> failed        submitted with every item invalid (jobs.create_job)
job     queued -> running      its first chunk is claimed (:func:`start_jobs`)
job     active -> completed    every item ended, some done (:func:`finish_jobs_if_complete`)
job     active -> failed       every item ended, none done (:func:`finish_jobs_if_complete`)
job     active -> cancelled    a user cancels it (:func:`cancel_job`)
chunk   queued -> running      a worker claims it and takes a lease (:func:`lease_chunk`, :func:`lease_queued`)
chunk   running -> queued      its run failed, or its holder is gone (:func:`release_chunks`)
chunk   * -> done              its items are committed under the lease (:func:`close_chunks`)
item    pending -> done|failed its result is written (results.write_results)
======  =====================  =======================================================

A chunk marked done never goes back; an item leaves ``pending`` once. Every update below names
the state it leaves in its WHERE clause, so a racing writer that already moved the row changes
nothing and learns so from the row count.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, tuple_, update

from sluice.clock import utcnow
from sluice.db import chunks_table, jobs_table
from sluice.ledger.codec import ACTIVE_JOBS
from sluice.status import ChunkStatus, JobStatus

jobs = jobs_table
chunks = chunks_table

ChunkKey = tuple[str, int]


def start_jobs(conn: Connection, job_ids: Collection[str], now: datetime) -> None:
    """queued -> running, for the jobs whose chunks were just claimed."""
    conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(list(job_ids)), jobs.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.RUNNING.value, started_at=now)
    )


def finish_jobs_if_complete(conn: Connection, job_ids: Sequence[str]) -> list[str]:
    """active -> completed (some item done) or failed (none done), for jobs whose items all ended;
    returns the jobs that finished in this call."""
    stmt = (
        update(jobs)
        .where(
            jobs.c.id.in_(list(job_ids)),
            jobs.c.done_items + jobs.c.failed_items >= jobs.c.total_items,
            jobs.c.status.in_(ACTIVE_JOBS),
        )
        .values(
            status=case((jobs.c.done_items == 0, JobStatus.FAILED.value), else_=JobStatus.COMPLETED.value),
            finished_at=utcnow(),
        )
        .returning(jobs.c.id)
    )
    return list(conn.execute(stmt).scalars())


def cancel_job(conn: Connection, job_id: str) -> bool:
    """active -> cancelled; False when the job had already ended."""
    res = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOBS))
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow())
    )
    return bool(res.rowcount)


def _lease_values(lease: str, worker: str | None, now: datetime) -> dict[str, Any]:
    return {
        "status": ChunkStatus.RUNNING.value,
        "deliveries": chunks.c.deliveries + 1,
        "lease": lease,
        "leased_at": now,
        "leased_by": worker,
    }


def lease_chunk(conn: Connection, key: ChunkKey, seen: Any, lease: str, worker: str | None, now: datetime) -> bool:
    """queued (or running under an expired lease) -> running under ``lease``, counting a delivery.

    ``seen`` is the chunk row as read: the update applies only if nobody moved it since (same
    status, same delivery count), so of two racing claimers exactly one wins.
    """
    res = conn.execute(
        update(chunks)
        .where(chunks.c.job_id == key[0], chunks.c.idx == key[1], chunks.c.status == seen.status,
               chunks.c.deliveries == seen.deliveries)
        .values(**_lease_values(lease, worker, now))
    )  # fmt: skip
    return bool(res.rowcount)


def lease_queued(conn: Connection, keys: list[ChunkKey], lease: str, worker: str | None, now: datetime) -> None:
    """queued -> running under one shared ``lease``; chunks no longer queued are left alone."""
    conn.execute(
        update(chunks)
        .where(tuple_(chunks.c.job_id, chunks.c.idx).in_(keys), chunks.c.status == ChunkStatus.QUEUED.value)
        .values(**_lease_values(lease, worker, now))
    )


def release_chunks(conn: Connection, where: ColumnElement[bool]) -> int:
    """running -> queued with no lease, so the next delivery claims at once; how many moved."""
    res = conn.execute(
        update(chunks)
        .where(where, chunks.c.status == ChunkStatus.RUNNING.value)
        .values(status=ChunkStatus.QUEUED.value, lease=None, leased_at=None, leased_by=None)
    )
    return int(res.rowcount)


def close_chunks(conn: Connection, keys: list[ChunkKey], lease: str | None) -> int:
    """-> done, where ``lease`` still holds (any holder when None: the job ended); how many moved."""
    cond: list[ColumnElement[bool]] = [tuple_(chunks.c.job_id, chunks.c.idx).in_(keys)]
    if lease is not None:
        cond.append(chunks.c.lease == lease)
    return int(conn.execute(update(chunks).where(*cond).values(status=ChunkStatus.DONE.value)).rowcount)
