"""The worker's side of the ledger: claim chunks, write results, close or release them.

* ``claim`` counts a delivery and takes a lease on the chunk; after ``max_attempts`` deliveries
  its remaining items fail instead (a poison chunk must not kill workers forever).
* ``write_results`` updates only items still pending and moves the job counters by the rows
  actually written, in the same transaction (:mod:`sluice.ledger.results`).
* ``close_all`` marks chunks done only where the caller still holds the lease it claimed with,
  so a redelivered copy and the original never both finish a chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, false, select, tuple_, update

from sluice.clock import as_utc, utcnow
from sluice.db import chunks_table, items_table, jobs_table
from sluice.families.base import ItemResult
from sluice.ledger.base import LedgerBase
from sluice.ledger.codec import ACTIVE_JOBS, result_params
from sluice.ledger.results import write_rows
from sluice.ledger.transitions import (
    ChunkKey,
    close_chunks,
    lease_chunk,
    lease_queued,
    release_chunks,
    renew_leases,
    split_chunk,
    start_jobs,
)
from sluice.status import ChunkStatus, ItemStatus, JobStatus

items = items_table
jobs = jobs_table
chunks = chunks_table


@dataclass
class Claim:
    """A chunk this worker now holds: the job's settings and its still-pending items."""

    job_id: str
    idx: int
    lease: str
    model: str
    params: dict[str, Any]
    items: list[tuple[int, dict[str, Any]]]
    #: a retry after a lost run, or a part split off one: run it alone, coalesce nothing with it
    alone: bool = False
    #: when its job was submitted (metrics: time from submit to claim)
    submitted_at: datetime | None = None
    #: deliveries of the chunk, this one included (more than 1: a redelivery)
    deliveries: int = 1


@dataclass
class Split:
    """A claimed chunk whose earlier run was lost, split in two new queued chunks to be sent."""

    job_id: str
    children: list[int]
    priority: int
    model: str


class Written(tuple[int, int]):
    """``(done, failed)`` rows a result write changed, with the counts per job and the jobs it finished."""

    by_job: dict[str, tuple[int, int]]
    finished_jobs: list[str]

    def __new__(
        cls, by_job: dict[str, tuple[int, int]] | None = None, finished_jobs: list[str] | None = None
    ) -> Written:
        by_job = by_job or {}
        self = super().__new__(cls, (sum(d for d, _ in by_job.values()), sum(f for _, f in by_job.values())))
        self.by_job, self.finished_jobs = by_job, finished_jobs or []
        return self

    @property
    def done(self) -> int:
        return self[0]

    @property
    def failed(self) -> int:
        return self[1]


class ClaimsLedger(LedgerBase):
    #: called with (model, job id, chunk index, items failed) after a chunk is dead-lettered (a worker's metrics)
    on_dead_letter: Callable[[str, str, int, int], None] | None = None

    def claim(self, job_id: str, idx: int, worker: str | None = None) -> Claim | Split | None:
        """Take the chunk; None when there is nothing to do.

        Nothing to do: the chunk is done, its job ended, another worker holds a fresh lease on it
        (a coalescing worker took it from the database before its message arrived), or it was
        dead-lettered. A lease held by ``worker`` itself is taken over: a solo-pool worker that
        receives a message runs nothing else, so it is no longer working on what it holds.

        A chunk whose earlier run was lost (the worker died or ran past the time limit) is split in
        two when it still has more than one pending item (:class:`Split`: send its parts), so
        that repeated deaths bisect down to the one item that causes them; a single item runs
        alone, and is failed after ``max_attempts`` lost runs.
        """
        with self.engine.begin() as conn:
            # One read decides the common no-work case: the message of a chunk a coalescing
            # worker already ran (every single-document job's message ends here).
            chunk = conn.execute(
                select(chunks, jobs.c.status.label("job_status"), jobs.c.model, jobs.c.params, jobs.c.priority,
                       jobs.c.created_at.label("submitted_at"))
                .join(jobs, jobs.c.id == chunks.c.job_id)
                .where(chunks.c.job_id == job_id, chunks.c.idx == idx)
            ).one_or_none()  # fmt: skip
            if chunk is None or chunk.status == ChunkStatus.DONE:
                return None
            if JobStatus(chunk.job_status).terminal:
                close_chunks(conn, [(job_id, idx)], lease=None)
                return None
            # Its own lease on a running chunk: given back by a failed run (a queued chunk's leased_by
            # only names who must send it, see split_chunk).
            mine = worker is not None and chunk.status == ChunkStatus.RUNNING and chunk.leased_by == worker
            if chunk.status == ChunkStatus.RUNNING and not mine and not self._lease_expired(chunk.leased_at):
                return None
            lease, now = str(uuid.uuid4()), utcnow()
            if not lease_chunk(conn, (job_id, idx), chunk, lease, worker, now, count=not mine):
                return None  # another worker claimed it between our read and our write
            start_jobs(conn, [job_id], now)
            in_chunk = and_(
                items.c.job_id == job_id,
                items.c.item >= chunk.start,
                items.c.item < chunk.stop,
                items.c.status == ItemStatus.PENDING.value,
            )
            found = self._take_items(conn, in_chunk).get(job_id, [])
            lost = chunk.deliveries > 0 and not mine  # claimed before and never closed: that run was lost
            if lost and len(found) > 1:
                children = split_chunk(conn, (job_id, idx), [i for i, _ in found], chunk.stop, worker)
                return Split(job_id, children, chunk.priority, chunk.model)
        if lost and chunk.deliveries + 1 > self.max_attempts:
            self.dead_letter(job_id, idx, lease, found, chunk.deliveries + 1, model=chunk.model)
            return None
        deliveries = chunk.deliveries + (0 if mine else 1)
        return Claim(job_id, idx, lease, chunk.model, chunk.params or {}, found, alone=lost or chunk.isolated,
                     submitted_at=as_utc(chunk.submitted_at), deliveries=deliveries)  # fmt: skip

    @staticmethod
    def _take_items(conn: Connection, pending: Any) -> dict[str, list[tuple[int, Any]]]:
        """Count an attempt on the pending items matched by ``pending`` and read them, by job."""
        conn.execute(update(items).where(pending).values(attempts=items.c.attempts + 1))
        by_job: dict[str, list[tuple[int, Any]]] = {}
        query = select(items.c.job_id, items.c.item, items.c.input).where(pending)
        for row in conn.execute(query.order_by(items.c.job_id, items.c.item)):
            by_job.setdefault(row.job_id, []).append((row.item, row.input))
        return by_job

    def _lease_expired(self, leased_at: datetime | None) -> bool:
        if leased_at is None:
            return True
        return utcnow() - as_utc(leased_at) > timedelta(seconds=self.lease_seconds)

    def claim_queued(
        self, model: str, exclude: ChunkKey, max_chunks: int, max_items: int, worker: str | None = None
    ) -> list[Claim]:
        """Cross-job coalescing: take queued chunks of other active jobs for ``model``, most urgent
        first, that fit in ``max_items`` items; one transaction, however many chunks.

        The chunks share one lease. Only chunks still queued move, so a chunk another worker takes
        meanwhile is skipped, never shared; a chunk past ``max_attempts`` is dead-lettered instead.
        """
        if max_chunks <= 0 or max_items <= 0:
            return []
        lease, now = str(uuid.uuid4()), utcnow()
        with self.engine.begin() as conn:
            params = _coalescing_candidates(conn, model, exclude, max_chunks, max_items)
            chosen = list(params)
            if not chosen:
                return []
            lease_queued(conn, chosen, lease, worker, now)
            taken = conn.execute(
                select(chunks.c.job_id, chunks.c.idx, chunks.c.start, chunks.c.stop, chunks.c.deliveries,
                       jobs.c.created_at)
                .join(jobs, jobs.c.id == chunks.c.job_id)
                .where(tuple_(chunks.c.job_id, chunks.c.idx).in_(chosen), chunks.c.lease == lease)
            ).all()  # fmt: skip
            if not taken:
                return []
            start_jobs(conn, {r.job_id for r in taken}, now)
            keys = [(r.job_id, i) for r in taken for i in range(r.start, r.stop)]
            pending = and_(tuple_(items.c.job_id, items.c.item).in_(keys), items.c.status == ItemStatus.PENDING.value)
            by_job = self._take_items(conn, pending)
        claims = []
        rank = {key: n for n, key in enumerate(chosen)}
        for r in sorted(taken, key=lambda r: rank[r.job_id, r.idx]):
            found = [(i, x) for i, x in by_job.get(r.job_id, []) if r.start <= i < r.stop]
            if r.deliveries > self.max_attempts:
                self.dead_letter(r.job_id, r.idx, lease, found, r.deliveries, model=model)
            else:
                claims.append(Claim(r.job_id, r.idx, lease, model, params[r.job_id, r.idx], found,
                                    submitted_at=as_utc(r.created_at), deliveries=r.deliveries))  # fmt: skip
        return claims

    def dead_letter(
        self, job_id: str, idx: int, lease: str, found: list[tuple[int, Any]], n: int, model: str = ""
    ) -> None:
        """Fail a chunk's pending items after too many deliveries, and close it (``on_dead_letter`` hears of it)."""
        error = (
            f"chunk {idx} was delivered {n} times without finishing (worker lost each time); "
            f"its items are failed after {self.max_attempts} attempts"
        )
        written = self.write_results({job_id: [ItemResult(item=i, error=error) for i, _ in found]}, worker=None)
        self.close(job_id, idx, lease)
        if self.on_dead_letter is not None:
            self.on_dead_letter(model, job_id, idx, written.failed)

    def is_cancelled(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one_or_none()
        return status is None or status == JobStatus.CANCELLED

    def write_results(self, results: dict[str, list[ItemResult]], worker: str | None) -> Written:
        """Store results (by job) for items still pending, in one transaction; what was written."""
        now = utcnow()
        rows = [result_params(job_id, r, worker, now) for job_id, batch in results.items() for r in batch]
        if not rows:
            return Written()
        with self.engine.begin() as conn:
            counts, finished = write_rows(conn, rows, worker, now)
        by_job: dict[str, tuple[int, int]] = {}
        for (job_id, status), n in counts.items():
            done, failed = by_job.get(job_id, (0, 0))
            by_job[job_id] = (done + n, failed) if status == ItemStatus.DONE.value else (done, failed + n)
        return Written(by_job, finished)

    def release(self, job_id: str, idx: int, lease: str, lost: bool = False) -> bool:
        """Give a chunk back (queued, no lease) after a failed run, so its redelivery can claim it at
        once. Unless the run is ``lost`` (it ran past its time limit), the delivery is not counted:
        an unreachable database says nothing about the chunk's items."""
        with self.engine.begin() as conn:
            mine = and_(chunks.c.job_id == job_id, chunks.c.idx == idx, chunks.c.lease == lease)
            return bool(release_chunks(conn, mine, uncount=not lost))

    def renew_leases(self, leases: list[str]) -> int:
        """Keep the leases a worker is working under fresh (its heartbeat calls this); how many chunks."""
        if not leases:
            return 0
        with self.engine.begin() as conn:
            return renew_leases(conn, leases, utcnow())

    def close_all(self, claims: list[Claim]) -> list[ChunkKey]:
        """Mark claimed chunks done where their leases still hold, in one transaction; returns the
        chunks known closed (all of a lease's chunks when its update matched every one of them)."""
        by_lease: dict[str, list[ChunkKey]] = {}
        for c in claims:
            by_lease.setdefault(c.lease, []).append((c.job_id, c.idx))
        closed: list[ChunkKey] = []
        with self.engine.begin() as conn:
            for lease, keys in by_lease.items():
                if close_chunks(conn, keys, lease) == len(keys):
                    closed += keys
        return closed

    def close(self, job_id: str, idx: int, lease: str) -> bool:
        with self.engine.begin() as conn:
            return bool(close_chunks(conn, [(job_id, idx)], lease))


def _coalescing_candidates(
    conn: Connection, model: str, exclude: ChunkKey, max_chunks: int, max_items: int
) -> dict[ChunkKey, dict[str, Any]]:
    """Queued chunks of active jobs for ``model``, most urgent first, up to the limits, with
    their jobs' params (read here, from the join the choice needs anyway)."""
    query = (
        select(chunks.c.job_id, chunks.c.idx, chunks.c.start, chunks.c.stop, jobs.c.params)
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(
            chunks.c.status == ChunkStatus.QUEUED.value,
            jobs.c.model == model,
            jobs.c.status.in_(ACTIVE_JOBS),
            chunks.c.deliveries == 0,
            chunks.c.isolated == false(),
        )  # a retried chunk runs alone
        .order_by(jobs.c.priority.desc(), jobs.c.created_at, chunks.c.idx)
        .limit(max_chunks + 1)
    )
    chosen: dict[ChunkKey, dict[str, Any]] = {}
    n_items = 0
    for r in conn.execute(query):
        size = r.stop - r.start
        # First fit: a chunk that would overflow the window is left to its own message, which
        # also bounds the (job, item) pairs the claim binds to about one chunk's worth.
        if (r.job_id, r.idx) == exclude or n_items + size > max_items:
            continue
        chosen[r.job_id, r.idx] = r.params or {}
        n_items += size
        if n_items >= max_items or len(chosen) >= max_chunks:
            break
    return chosen
