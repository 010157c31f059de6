"""Recovery queries: chunks whose holder is gone and chunks whose message must be sent again.

The decisions (which queue serves a model now, whether resending helps) live in
:mod:`sluice.recovery`; this module only reads and moves rows.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, or_, select, true, tuple_

from sluice.clock import utcnow
from sluice.db import chunks_table, jobs_table
from sluice.ledger.base import LedgerBase
from sluice.ledger.codec import ACTIVE_JOBS
from sluice.ledger.transitions import release_chunks
from sluice.status import ChunkStatus

chunks = chunks_table

#: Seconds after a job's creation before its never-sent chunks are taken for lost.
SEND_GRACE_S = 10
jobs = jobs_table


class ChunkRef(NamedTuple):
    """A chunk with what resending it needs: its job's priority and model, where it went last."""

    job_id: str
    idx: int
    priority: int
    model: str
    queue: str | None = None
    status: str | None = None


class RecoveryLedger(LedgerBase):
    def release_held_by(self, hostnames: Collection[str]) -> list[ChunkRef]:
        """Put the running chunks of active jobs leased by these workers back to queued (no lease);
        returns them. Chunks of ended jobs stay as they are: nothing would send them again."""
        if not hostnames:
            return []
        active = select(jobs.c.id).where(jobs.c.status.in_(ACTIVE_JOBS))
        # Running under their lease, or split parts they had not sent yet (see split_chunk).
        theirs = or_(
            chunks.c.status == ChunkStatus.RUNNING.value,
            and_(chunks.c.status == ChunkStatus.QUEUED.value, chunks.c.enqueued_at.is_(None)),
        )
        held = and_(theirs, chunks.c.leased_by.in_(list(hostnames)), chunks.c.job_id.in_(active))  # fmt: skip
        query = (select(chunks.c.job_id, chunks.c.idx, jobs.c.priority, jobs.c.model)
                 .join(jobs, jobs.c.id == chunks.c.job_id).where(held))  # fmt: skip
        with self.engine.begin() as conn:
            rows = [ChunkRef(*r) for r in conn.execute(query)]
            release_chunks(conn, held)
        return rows

    def queued_among(self, keys: Collection[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of these chunks that are queued (no run under way or done) in an active job."""
        if not keys:
            return set()
        query = (
            select(chunks.c.job_id, chunks.c.idx)
            .join(jobs, jobs.c.id == chunks.c.job_id)
            .where(tuple_(chunks.c.job_id, chunks.c.idx).in_(list(keys)),
                   chunks.c.status == ChunkStatus.QUEUED.value, jobs.c.status.in_(ACTIVE_JOBS))
        )  # fmt: skip
        with self.engine.connect() as conn:
            return {(r.job_id, r.idx) for r in conn.execute(query)}

    def waiting_queues(self, older_than: float) -> set[str]:
        """The queues that queued chunks of active jobs were sent to ``older_than`` seconds ago or more."""
        query = (
            select(chunks.c.queue)
            .distinct()
            .join(jobs, jobs.c.id == chunks.c.job_id)
            .where(*self._sent_before(older_than))
        )
        with self.engine.connect() as conn:
            return {str(q) for q in conn.execute(query).scalars()}

    def queued_on(self, queues: Collection[str], older_than: float) -> list[ChunkRef]:
        """The queued chunks of active jobs sent to these queues ``older_than`` seconds ago or more."""
        query = (
            select(chunks.c.job_id, chunks.c.idx, jobs.c.priority, jobs.c.model, chunks.c.queue, chunks.c.status)
            .join(jobs, jobs.c.id == chunks.c.job_id)
            .where(*self._sent_before(older_than), chunks.c.queue.in_(list(queues)))
            .order_by(chunks.c.job_id, chunks.c.idx)
        )
        with self.engine.connect() as conn:
            return [ChunkRef(*r) for r in conn.execute(query)]

    @staticmethod
    def _sent_before(older_than: float) -> list[Any]:
        sent = utcnow() - timedelta(seconds=older_than)
        return [chunks.c.status == ChunkStatus.QUEUED.value, chunks.c.queue.is_not(None), chunks.c.enqueued_at < sent,
                jobs.c.status.in_(ACTIVE_JOBS)]  # fmt: skip

    def resend_candidates(self, reading: Collection[str], include_queued: bool) -> list[ChunkRef]:
        """Chunks of active jobs whose message may be missing: running under an expired lease, never
        sent, on a queue no live worker reads (``reading`` are the queues read), or, with
        ``include_queued``, any chunk not yet started."""
        now = utcnow()
        expired = now - timedelta(seconds=self.lease_seconds)
        queued = chunks.c.status == ChunkStatus.QUEUED.value
        # A producer commits a job, then sends it, then records the send: a job younger than
        # this is most likely being sent right now, not lost.
        settled = jobs.c.created_at < now - timedelta(seconds=SEND_GRACE_S)
        cond: list[Any] = [
            and_(chunks.c.status == ChunkStatus.RUNNING.value, chunks.c.leased_at < expired),
            and_(queued, chunks.c.enqueued_at.is_(None), settled),
        ]
        if include_queued:
            cond.append(queued)
        else:  # stranded: on a queue nobody reads
            unread = chunks.c.queue.not_in(list(reading)) if reading else true()
            cond.append(and_(queued, chunks.c.queue.is_not(None), unread))
        query = (
            select(chunks.c.job_id, chunks.c.idx, jobs.c.priority, jobs.c.model, chunks.c.queue, chunks.c.status)
            .join(jobs, jobs.c.id == chunks.c.job_id)
            .where(jobs.c.status.in_(ACTIVE_JOBS), or_(*cond))
            .order_by(chunks.c.job_id, chunks.c.idx)
        )
        with self.engine.connect() as conn:
            return [ChunkRef(*r) for r in conn.execute(query)]
