"""Cluster-wide figures read from the database, for the metrics exporter and ``sluice top``.

Every figure is cheap enough to read once a second: job counts by status (an index on
``jobs.status``), item counts from the jobs' own counters (never a count over ``items``), and
only the chunks still open (queued or running, an index on ``chunks.status``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, func, select

from sluice.clock import as_utc
from sluice.db import chunks_table, jobs_table
from sluice.ledger.base import LedgerBase
from sluice.ledger.codec import ACTIVE_JOBS
from sluice.ledger.jobs import JobInfo
from sluice.ledger.jobs import _info as job_info
from sluice.status import ChunkStatus, JobStatus

jobs = jobs_table
chunks = chunks_table
OPEN_CHUNKS = (ChunkStatus.QUEUED.value, ChunkStatus.RUNNING.value)


@dataclass(frozen=True)
class ChunkGroup:
    """Open chunks of active jobs sharing a queue, model, status and job priority."""

    queue: str | None  # None: never sent
    model: str
    status: str
    priority: int
    chunks: int
    items: int  # items the chunks span (some may be done already)


@dataclass(frozen=True)
class RunningChunk:
    """A chunk a worker holds now: what ``sluice top`` shows as its current batch."""

    worker: str
    job_id: str
    idx: int
    model: str
    items: int
    leased_at: datetime | None


@dataclass
class ClusterStats:
    """One reading of the database: jobs and items by status, open chunks, the oldest wait."""

    jobs: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    chunks: list[ChunkGroup] = field(default_factory=list)
    #: when the longest-waiting queued chunk was sent (or its job submitted, if never sent)
    oldest_queued: datetime | None = None


class StatsLedger(LedgerBase):
    def cluster_stats(self) -> ClusterStats:
        """Jobs by status, items by status (done, failed, pending), open chunks, oldest queued chunk."""
        with self.engine.connect() as conn:
            return ClusterStats(_job_counts(conn), _item_counts(conn), _open_chunks(conn), _oldest_queued(conn))

    def running_chunks(self) -> list[RunningChunk]:
        """Chunks held by a worker now, oldest lease first."""
        query = (
            select(chunks.c.leased_by, chunks.c.job_id, chunks.c.idx, jobs.c.model, chunks.c.start, chunks.c.stop,
                   chunks.c.leased_at)
            .join(jobs, jobs.c.id == chunks.c.job_id)
            .where(chunks.c.status == ChunkStatus.RUNNING.value, jobs.c.status.in_(ACTIVE_JOBS))
            .order_by(chunks.c.leased_at)
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [RunningChunk(r.leased_by or "?", r.job_id, r.idx, r.model, r.stop - r.start,
                             as_utc(r.leased_at) if r.leased_at else None) for r in rows]  # fmt: skip

    def finished_jobs(self, limit: int = 5) -> list[JobInfo]:
        """The jobs that ended last, newest first."""
        ended = [s.value for s in JobStatus if s.terminal]
        query = select(jobs).where(jobs.c.status.in_(ended), jobs.c.finished_at.is_not(None))
        with self.engine.connect() as conn:
            return [job_info(r) for r in conn.execute(query.order_by(jobs.c.finished_at.desc()).limit(limit)).all()]

    def active_jobs(self, limit: int = 20) -> list[JobInfo]:
        """Running jobs, then queued ones, most urgent and oldest first."""
        running = (jobs.c.status == JobStatus.RUNNING.value).desc()
        query = select(jobs).where(jobs.c.status.in_(ACTIVE_JOBS))
        query = query.order_by(running, jobs.c.priority.desc(), jobs.c.created_at).limit(limit)
        with self.engine.connect() as conn:
            return [job_info(r) for r in conn.execute(query).all()]


def _job_counts(conn: Connection) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
    counts.update({status: int(n) for status, n in conn.execute(query)})
    return counts


def _item_counts(conn: Connection) -> dict[str, int]:
    done, failed = conn.execute(
        select(func.coalesce(func.sum(jobs.c.done_items), 0), func.coalesce(func.sum(jobs.c.failed_items), 0))
    ).one()
    left = func.coalesce(func.sum(jobs.c.total_items - jobs.c.done_items - jobs.c.failed_items), 0)
    pending = conn.execute(select(left).where(jobs.c.status.in_(ACTIVE_JOBS))).scalar_one()
    return {"done": int(done), "failed": int(failed), "pending": int(pending)}


def _open_chunks(conn: Connection) -> list[ChunkGroup]:
    keys = (chunks.c.queue, jobs.c.model, chunks.c.status, jobs.c.priority)
    query = (
        select(*keys, func.count(), func.coalesce(func.sum(chunks.c.stop - chunks.c.start), 0))
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(chunks.c.status.in_(OPEN_CHUNKS), jobs.c.status.in_(ACTIVE_JOBS))
        .group_by(*keys)
    )
    return [ChunkGroup(q, m, s, int(p), int(n), int(i)) for q, m, s, p, n, i in conn.execute(query)]


def _oldest_queued(conn: Connection) -> datetime | None:
    since = func.min(func.coalesce(chunks.c.enqueued_at, jobs.c.created_at))
    query = (
        select(since)
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(chunks.c.status == ChunkStatus.QUEUED.value, jobs.c.status.in_(ACTIVE_JOBS))
    )
    found = conn.execute(query).scalar_one_or_none()
    if isinstance(found, str):  # SQLite hands back COALESCE(...) of timestamps as text
        found = datetime.fromisoformat(found)
    return as_utc(found) if found is not None else None
