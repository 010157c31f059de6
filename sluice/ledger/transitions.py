"""The job and chunk state machine, each transition written once.

======  =====================  =======================================================
what    from -> to             when (function)
======  =====================  =======================================================
job     (new) -> queued        submitted with at least one valid item (jobs.create_job)
job     (new) -> failed        submitted with every item invalid (jobs.create_job)
job     queued -> running      its first chunk is claimed (:func:`start_jobs`)
job     active -> completed    every item ended, some done (:func:`finish_jobs_if_complete`; its chunks close)
job     active -> failed       every item ended, none done (:func:`finish_jobs_if_complete`)
job     active -> cancelled    a user cancels it (:func:`cancel_job`)
job     any end (above)        with a callback_url: its webhook delivery row, in the same transaction
chunk   queued -> running      a worker claims it and takes a lease (:func:`lease_chunk`, :func:`lease_queued`)
chunk   running -> queued      its run failed, or its holder is gone (:func:`release_chunks`)
chunk   running -> done + 2    a lost run's chunk splits into two queued parts (:func:`split_chunk`)
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

from sqlalchemy import ColumnElement, Connection, case, func, insert, select, tuple_, update

from sluice.clock import utcnow
from sluice.db import chunks_table, jobs_table
from sluice.ledger.codec import ACTIVE_JOBS
from sluice.ledger.webhooks import queue_callbacks
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
    finished = list(conn.execute(stmt).scalars())
    if finished:  # a chunk whose run wrote its items but died before closing must not stay "running"
        conn.execute(update(chunks).where(chunks.c.job_id.in_(finished)).values(status=ChunkStatus.DONE.value))
        queue_callbacks(conn, finished, utcnow())  # same transaction: an ended job's callback is never lost
    return finished


def cancel_job(conn: Connection, job_id: str) -> bool:
    """active -> cancelled; False when the job had already ended."""
    res = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOBS))
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow())
    )
    if res.rowcount:
        queue_callbacks(conn, [job_id], utcnow())
    return bool(res.rowcount)


def _lease_values(lease: str, worker: str | None, now: datetime, count: bool = True) -> dict[str, Any]:
    return {
        "status": ChunkStatus.RUNNING.value,
        "deliveries": chunks.c.deliveries + (1 if count else 0),
        "lease": lease,
        "leased_at": now,
        "leased_by": worker,
    }


def lease_chunk(
    conn: Connection, key: ChunkKey, seen: Any, lease: str, worker: str | None, now: datetime, count: bool = True
) -> bool:
    """queued (or running under an expired lease) -> running under ``lease``, counting a delivery.

    ``seen`` is the chunk row as read: the update applies only if nobody moved it since (same
    status, same delivery count), so of two racing claimers exactly one wins. ``count`` False:
    the claimer takes over its own lease, whose earlier run it gave back (not a lost run).
    """
    res = conn.execute(
        update(chunks)
        .where(chunks.c.job_id == key[0], chunks.c.idx == key[1], chunks.c.status == seen.status,
               chunks.c.deliveries == seen.deliveries)
        .values(**_lease_values(lease, worker, now, count))
    )  # fmt: skip
    return bool(res.rowcount)


def lease_queued(conn: Connection, keys: list[ChunkKey], lease: str, worker: str | None, now: datetime) -> None:
    """queued -> running under one shared ``lease``; chunks no longer queued are left alone."""
    conn.execute(
        update(chunks)
        .where(tuple_(chunks.c.job_id, chunks.c.idx).in_(keys), chunks.c.status == ChunkStatus.QUEUED.value)
        .values(**_lease_values(lease, worker, now))
    )


def release_chunks(conn: Connection, where: ColumnElement[bool], uncount: bool = False) -> int:
    """running -> queued with no lease, so the next delivery claims at once; how many moved.

    ``uncount`` takes back the delivery the claim counted: the run failed for a reason that is
    not the chunk's (the database went away), so it must not count toward splitting or failing it.
    """
    values: dict[str, Any] = {"status": ChunkStatus.QUEUED.value, "lease": None, "leased_at": None, "leased_by": None}
    if uncount:
        values["deliveries"] = case((chunks.c.deliveries > 0, chunks.c.deliveries - 1), else_=0)
    res = conn.execute(update(chunks).where(where, chunks.c.status == ChunkStatus.RUNNING.value).values(**values))
    return int(res.rowcount)


def renew_leases(conn: Connection, leases: list[str], now: datetime) -> int:
    """Refresh ``leased_at`` of running chunks under these leases (their holder is working on them)."""
    res = conn.execute(
        update(chunks)
        .where(chunks.c.lease.in_(leases), chunks.c.status == ChunkStatus.RUNNING.value)
        .values(leased_at=now)
    )
    return int(res.rowcount)


def split_chunk(conn: Connection, key: ChunkKey, pending: list[int], stop: int, worker: str | None) -> list[int]:
    """running -> done, its pending items handed to two new queued, isolated chunks; their indices.

    The parts carry ``worker`` in ``leased_by`` until their messages are recorded sent: should it
    die between this commit and the send, recovery of its chunks sends them (``release_held_by``).

    The cut is at the middle pending item, so both parts have work; the parts start with no
    deliveries and run alone (never coalesced), so a part that is lost again splits again.
    """
    job_id, _ = key
    first = int(conn.execute(select(func.max(chunks.c.idx)).where(chunks.c.job_id == job_id)).scalar_one()) + 1
    cut = pending[len(pending) // 2]
    parts = [(pending[0], cut), (cut, stop)]
    conn.execute(insert(chunks), [
        {"job_id": job_id, "idx": first + n, "start": start, "stop": end, "status": ChunkStatus.QUEUED.value,
         "deliveries": 0, "isolated": True, "leased_by": worker}
        for n, (start, end) in enumerate(parts)
    ])  # fmt: skip
    close_chunks(conn, [key], lease=None)
    return [first, first + 1]


def close_chunks(conn: Connection, keys: list[ChunkKey], lease: str | None) -> int:
    """-> done, where ``lease`` still holds (any holder when None: the job ended); how many moved."""
    cond: list[ColumnElement[bool]] = [tuple_(chunks.c.job_id, chunks.c.idx).in_(keys)]
    if lease is not None:
        cond.append(chunks.c.lease == lease)
    return int(conn.execute(update(chunks).where(*cond).values(status=ChunkStatus.DONE.value)).rowcount)
