"""The producer's side of the ledger: store a job with its items and chunks, record where its
chunks were sent, and read jobs, counts and results back.

A job, its items and its chunks are written in one transaction and only then sent, so a message
never points at rows that do not exist; a chunk whose message was never sent (or was lost with
Redis) is still in the database for recovery to send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update

from sluice.clock import as_utc, utcnow
from sluice.db import chunks_table, items_table, jobs_table
from sluice.errors import ValidationError
from sluice.ledger.artifacts import with_summaries
from sluice.ledger.base import LedgerBase
from sluice.ledger.codec import ACTIVE_JOBS, result_row
from sluice.ledger.transitions import cancel_job
from sluice.ledger.webhooks import queue_callbacks
from sluice.status import ChunkStatus, ItemStatus, JobStatus

items = items_table
jobs = jobs_table
chunks = chunks_table

_INSERT_BATCH = 1000

#: One item to store: its position, its fields, and its validation error (None when valid);
#: optionally a fourth element, the caller's key for it (``items.key``).
NewItem = tuple[int, dict[str, Any], str | None] | tuple[int, dict[str, Any], str | None, str | None]
#: Sends a stored job's chunks (after commit) and returns the queue they went to, or None when
#: they could not be sent (they stay unsent, and recovery sends them later).
Send = Callable[[list[int]], str | None]


@dataclass
class NewJob:
    id: str
    task: str
    model: str
    params: dict[str, Any]
    priority: int
    chunk_size: int
    #: the API key owner who submitted it (None: the CLI, the Python client, an unauthenticated API)
    owner: str | None = None
    #: where to POST its summary when it ends (validated at submit: sluice.webhooks.callback_problem)
    callback_url: str | None = None


@dataclass
class JobInfo:
    """A job's state as stored in the database."""

    id: str
    model: str
    task: str
    status: JobStatus
    priority: int
    total: int
    done: int
    failed: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: why its queued chunks will not be picked up (no live worker consumes their queue); None if they will
    waiting_reason: str | None = None
    owner: str | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def pending(self) -> int:
        return self.total - self.finished

    @property
    def elapsed_s(self) -> float | None:
        """Seconds from submission to the last result (or to now while running)."""
        end = self.finished_at or (datetime.now(UTC) if self.started_at else None)
        return (as_utc(end) - as_utc(self.created_at)).total_seconds() if end else None

    @property
    def items_per_s(self) -> float | None:
        elapsed = self.elapsed_s
        return self.finished / elapsed if elapsed else None


def _info(row: Any) -> JobInfo:
    return JobInfo(
        id=row.id, model=row.model, task=row.task, status=JobStatus(row.status), priority=row.priority,
        total=row.total_items, done=row.done_items, failed=row.failed_items, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, owner=row.owner,
    )  # fmt: skip


class JobsLedger(LedgerBase):
    def create_job(self, job: NewJob, new_items: Iterable[NewItem], send: Send) -> None:
        """Store the job, its items and chunks in one transaction, then ``send`` its chunks and
        record where they went, over the same connection (a checkout costs a ping on PostgreSQL).

        ``new_items`` may raise (a rejected submission): the transaction rolls back and nothing
        is stored. A job whose every item is invalid is stored failed and nothing is sent.
        """
        with self.engine.connect() as conn:
            with conn.begin():
                conn.execute(insert(jobs).values(
                    id=job.id, task=job.task, model=job.model, params=job.params, priority=job.priority,
                    status=JobStatus.QUEUED.value, total_items=0, done_items=0, failed_items=0,
                    created_at=utcnow(), owner=job.owner, callback_url=job.callback_url))  # fmt: skip
                total, bad = self._insert_items(conn, job.id, new_items)
                if total == 0:
                    raise ValidationError("no items to process: the input is empty")
                rows = [{"job_id": job.id, "idx": n, "start": start, "stop": min(start + job.chunk_size, total),
                         "status": ChunkStatus.QUEUED.value, "deliveries": 0}
                        for n, start in enumerate(range(0, total, job.chunk_size))]  # fmt: skip
                conn.execute(insert(chunks), rows)
                status = JobStatus.FAILED if bad == total else JobStatus.QUEUED
                conn.execute(update(jobs).where(jobs.c.id == job.id).values(
                    total_items=total, failed_items=bad, status=status.value,
                    finished_at=utcnow() if status is JobStatus.FAILED else None))  # fmt: skip
                if status is JobStatus.FAILED:
                    queue_callbacks(conn, [job.id], utcnow())
            if bad < total:
                indices = list(range(len(rows)))
                queue = send(indices)
                if queue is None:
                    return
                with conn.begin():
                    self._mark_sent(conn, job.id, indices, queue)

    @staticmethod
    def _insert_items(conn: Any, job_id: str, new_items: Iterable[NewItem]) -> tuple[int, int]:
        batch: list[dict[str, Any]] = []
        total = bad = 0
        for index, fields, error, *key in new_items:
            total += 1
            bad += error is not None
            batch.append({"job_id": job_id, "item": index, "attempts": 0, "error": error, "input": fields,
                          "key": key[0] if key else None,
                          "status": (ItemStatus.FAILED if error else ItemStatus.PENDING).value})  # fmt: skip
            if len(batch) >= _INSERT_BATCH:
                conn.execute(insert(items), batch)
                batch.clear()
        if batch:
            conn.execute(insert(items), batch)
        return total, bad

    def mark_sent(self, job_id: str, idx: list[int], queue: str) -> None:
        """Record that these chunks' messages went to ``queue`` just now."""
        with self.engine.begin() as conn:
            self._mark_sent(conn, job_id, idx, queue)

    @staticmethod
    def _mark_sent(conn: Any, job_id: str, idx: list[int], queue: str) -> None:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id, chunks.c.idx.in_(idx))
                     .values(enqueued_at=utcnow(), queue=queue))  # fmt: skip

    def job(self, job_id: str) -> JobInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
        return None if row is None else _info(row)

    def job_model(self, job_id: str) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(select(jobs.c.model).where(jobs.c.id == job_id)).scalar_one())

    def recent_jobs(self, limit: int) -> list[JobInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)).all()
        return [_info(r) for r in rows]

    def jobs_page(
        self, owner: str | None, status: str | None = None, after: str | None = None, limit: int = 20
    ) -> list[JobInfo]:
        """Jobs newest first, ``limit`` of them after job ``after`` (a cursor: the last id of the
        previous page); only ``owner``'s unless ``owner`` is None (an admin), only ``status`` if given."""
        query = select(jobs)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if status is not None:
            query = query.where(jobs.c.status == status)
        with self.engine.connect() as conn:
            if after is not None:
                cursor = conn.execute(select(jobs.c.created_at, jobs.c.id).where(jobs.c.id == after)).one_or_none()
                if cursor is None:
                    return []
                same = and_(jobs.c.created_at == cursor.created_at, jobs.c.id < cursor.id)
                query = query.where(or_(jobs.c.created_at < cursor.created_at, same))
            rows = conn.execute(query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)).all()
        return [_info(r) for r in rows]

    def queued_items(self, owner: str | None) -> int:
        """Items of ``owner``'s active jobs that have not ended yet (what it has waiting in the queue)."""
        left = func.coalesce(func.sum(jobs.c.total_items - jobs.c.done_items - jobs.c.failed_items), 0)
        with self.engine.connect() as conn:
            return int(conn.execute(select(left).where(jobs.c.owner == owner,
                                                       jobs.c.status.in_(ACTIVE_JOBS))).scalar_one())  # fmt: skip

    def queued_chunk_queues(self, job_id: str) -> set[str | None]:
        """The queues the job's queued chunks were sent to (None: never sent)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(chunks.c.queue).distinct().where(
                chunks.c.job_id == job_id, chunks.c.status == ChunkStatus.QUEUED.value)).scalars())  # fmt: skip

    def item_counts(self, job_id: str) -> dict[str, int]:
        """Items per status, counted from the item rows themselves."""
        with self.engine.connect() as conn:
            query = select(items.c.status, func.count()).where(items.c.job_id == job_id).group_by(items.c.status)
            return {status: n for status, n in conn.execute(query)}

    def cancel(self, job_id: str) -> bool:
        """Mark the job cancelled; False if it had already ended."""
        with self.engine.begin() as conn:
            return cancel_job(conn, job_id)

    def results(
        self, job_id: str, include_input: bool = False, *, status: str | None = None, after: int | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """One row per item, in input order, streamed from the database in pages; only items in
        ``status`` if given, only those after item ``after``, at most ``limit``. Rows of items
        with artifacts carry their summary (``artifacts``: n, media_type, bytes, name; one query
        per page, never their bytes)."""
        cols = [items.c.item, items.c.key, items.c.status, items.c.label, items.c.score, items.c.output,
                items.c.embedding, items.c.error]  # fmt: skip
        if include_input:
            cols.append(items.c.input)
        where: list[ColumnElement[bool]] = [items.c.job_id == job_id]
        if status is not None:
            where.append(items.c.status == status)
        if after is not None:
            where.append(items.c.item > after)
        query = select(*cols).where(*where).order_by(items.c.item).limit(limit)
        with self.engine.connect().execution_options(yield_per=1000) as conn:
            for page in conn.execute(query).partitions():
                yield from with_summaries(conn, job_id, [result_row(row, include_input) for row in page])
