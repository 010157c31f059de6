"""The Python client: submit bulk jobs, follow their progress, read their results.

Submission writes the job, its items and its chunks in one transaction and only then enqueues
chunk references, so a message never points at rows that do not exist; a chunk whose message was
never sent (or was lost with Redis) is still in the database for ``sluice reconcile``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, insert, select, update

from producer.validate import MAX_REPORTED, check_item, normalise, rejection
from sluice.celery_app import PROCESS_CHUNK, create_app, redis_priority
from sluice.db import Chunk, Item, Job, as_utc, get_engine, utcnow
from sluice.errors import JobNotFoundError, ValidationError
from sluice.registry import Registry, load_registry
from sluice.routing import WorkerRow, load_workers, route, waiting_reason
from sluice.settings import Settings, get_settings
from sluice.status import ChunkStatus, ItemStatus, JobStatus
from sluice.families import family_for

_INSERT_BATCH = 1000
#: How long a submit may route on the live-worker list read by an earlier one. Liveness already
#: lags by a few heartbeats, so a second more changes little, and a backend sending one document
#: per job skips a database read per job. A chunk routed to a queue nobody reads any more is
#: re-routed by ``sluice reconcile``.
ROUTE_CACHE_S = 1.0


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


class Client:
    """Submit and follow jobs. Settings come from the environment unless given."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.engine = get_engine(self.settings.resolved_database_url)
        self._celery = None
        self._live: tuple[float, list[WorkerRow]] = (float("-inf"), [])

    @property
    def registry(self) -> Registry:
        return load_registry(self.settings.models_file)

    @property
    def celery(self):  # type: ignore[no-untyped-def]
        if self._celery is None:
            self._celery = create_app(self.settings)
        return self._celery

    # submit ---------------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        items: Iterable[str | dict[str, Any]],
        params: dict[str, Any] | None = None,
        priority: int = 0,
        skip_invalid: bool = False,
    ) -> str:
        """Validate, store and enqueue a job; return its id.

        Invalid items reject the whole job with a message listing them, unless ``skip_invalid``,
        which stores them as failed items (with their error) so every input position is kept.
        """
        params = dict(params or {})
        if not 0 <= priority <= 9:
            raise ValidationError(f"priority must be between 0 and 9 (9 is most urgent), got {priority}")
        spec = self.registry.get(model)
        family = family_for(spec.task)
        family.validate_params(params, spec)
        job_id = str(uuid.uuid4())
        # One connection for both transactions: a checkout costs a liveness ping on PostgreSQL.
        with self.engine.connect() as conn:
            with conn.begin():
                conn.execute(insert(Job.__table__).values(
                    id=job_id, task=spec.task, model=model, params=params, priority=priority,
                    status=JobStatus.QUEUED.value, total_items=0, done_items=0, failed_items=0,
                    created_at=utcnow()))  # fmt: skip
                total, bad = self._insert_items(conn, job_id, family, spec, params, items, skip_invalid)
                chunks = self._insert_chunks(conn, job_id, total)
                status = JobStatus.FAILED if bad == total else JobStatus.QUEUED
                conn.execute(update(Job.__table__).where(Job.id == job_id).values(
                    total_items=total, failed_items=bad, status=status.value,
                    finished_at=utcnow() if status is JobStatus.FAILED else None))  # fmt: skip
            if bad < total:
                self.enqueue(job_id, chunks, priority, model, conn=conn)
        return job_id

    def _insert_items(
        self, conn: Connection, job_id: str, family: Any, spec: Any, params: dict[str, Any],
        items: Iterable[str | dict[str, Any]], skip_invalid: bool,
    ) -> tuple[int, int]:  # fmt: skip
        errors: list[str] = []
        rows: list[dict[str, Any]] = []
        total = bad = 0
        for index, raw in enumerate(items):
            record = normalise(raw, index)
            error = check_item(family, spec, params, record, index, self.settings)
            total += 1
            if error:
                bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(error)
            if not skip_invalid and errors:
                continue  # keep scanning to report every problem, write nothing
            rows.append({"job_id": job_id, "item": index, "attempts": 0, "error": error,
                         "input": record if isinstance(record, dict) else {},
                         "status": (ItemStatus.FAILED if error else ItemStatus.PENDING).value})  # fmt: skip
            if len(rows) >= _INSERT_BATCH:
                conn.execute(insert(Item.__table__), rows)
                rows.clear()
        if bad and not skip_invalid:
            raise rejection(errors, bad)
        if total == 0:
            raise ValidationError("no items to process: the input is empty")
        if rows:
            conn.execute(insert(Item.__table__), rows)
        return total, bad

    def _insert_chunks(self, conn: Connection, job_id: str, total: int) -> list[int]:
        size = self.settings.chunk_size
        rows = [
            {"job_id": job_id, "idx": n, "start": start, "stop": min(start + size, total),
             "status": ChunkStatus.QUEUED.value, "deliveries": 0}
            for n, start in enumerate(range(0, total, size))
        ]  # fmt: skip
        conn.execute(insert(Chunk.__table__), rows)
        return [row["idx"] for row in rows]

    def enqueue(
        self, job_id: str, chunks: list[int], priority: int, model: str | None = None, conn: Connection | None = None
    ) -> str:
        """Send one message per chunk: a reference (job id, chunk index), never the documents.

        The chunks go to the model's own queue while a live worker preloads the model, otherwise
        to the shared queue; the queue is recorded on each chunk. Returns the queue. ``conn``, if
        given, must not be inside a transaction.
        """
        with nullcontext(conn) if conn is not None else self.engine.connect() as c:
            if model is None:
                model = c.execute(select(Job.model).where(Job.id == job_id)).scalar_one()
                c.rollback()
            queue = route(model, self._routing_workers(), self.settings.queue)
            for idx in chunks:
                self.celery.send_task(PROCESS_CHUNK, args=[job_id, idx], queue=queue, priority=redis_priority(priority))
            with c.begin():
                c.execute(update(Chunk.__table__).where(Chunk.job_id == job_id, Chunk.idx.in_(chunks))
                          .values(enqueued_at=utcnow(), queue=queue))  # fmt: skip
        return queue

    def workers(self) -> list[WorkerRow]:
        """Live workers: fresh heartbeat, not stopped."""
        found = load_workers(self.engine, self.settings.heartbeat_seconds)
        self._live = (time.monotonic(), found)
        return found

    def _routing_workers(self) -> list[WorkerRow]:
        """The live workers as read at most ``ROUTE_CACHE_S`` ago (reading them again if older)."""
        read_at, found = self._live
        return found if time.monotonic() - read_at < ROUTE_CACHE_S else self.workers()

    # follow ---------------------------------------------------------------------------------
    def status(self, job_id: str, explain: bool = True) -> JobInfo:
        """The job's row; with ``explain``, also why its queued chunks may not be picked up
        (two more queries, which progress polling skips)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Job.__table__).where(Job.id == job_id)).one_or_none()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}; `sluice jobs` lists recent ones")
        status = JobStatus(row.status)
        return JobInfo(
            id=row.id, model=row.model, task=row.task, status=status, priority=row.priority,
            total=row.total_items, done=row.done_items, failed=row.failed_items, created_at=row.created_at,
            started_at=row.started_at, finished_at=row.finished_at,
            waiting_reason=None if status.terminal or not explain else self._waiting_reason(job_id, row.model),
        )  # fmt: skip

    def _waiting_reason(self, job_id: str, model: str) -> str | None:
        """Whether any live worker reads the queues this job's queued chunks were sent to."""
        with self.engine.connect() as conn:
            queues = set(conn.execute(select(Chunk.queue).distinct().where(
                Chunk.job_id == job_id, Chunk.status == ChunkStatus.QUEUED.value)).scalars())  # fmt: skip
        return waiting_reason(model, queues, self.workers(), self.settings.queue) if queues else None

    def item_counts(self, job_id: str) -> dict[str, int]:
        """Items per status, counted from the item rows themselves."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status))
            return {status: n for status, n in rows}

    def wait(self, job_id: str, timeout: float | None = None, progress: bool = False, poll_s: float = 0.5) -> JobInfo:
        """Poll the database until the job ends; optionally draw a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        info = self.status(job_id, explain=False)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=info.total, unit="doc", desc=f"job {job_id[:8]}", smoothing=0.1)
        try:
            while True:
                if bar is not None:
                    bar.update(info.finished - bar.n)
                    bar.set_postfix(failed=info.failed, refresh=False)
                if info.status.terminal:
                    return info
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {info.status} after {timeout}s "
                                       f"({info.finished}/{info.total} items)")  # fmt: skip
                time.sleep(poll_s)
                info = self.status(job_id, explain=False)
        finally:
            if bar is not None:
                bar.close()

    def cancel(self, job_id: str) -> bool:
        """Mark a job cancelled; workers check before each batch. False if it had already ended."""
        self.status(job_id, explain=False)
        with self.engine.begin() as conn:
            res = conn.execute(update(Job.__table__).where(
                Job.id == job_id, Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])
            ).values(status=JobStatus.CANCELLED.value, finished_at=utcnow()))  # fmt: skip
        return bool(res.rowcount)

    def jobs(self, limit: int = 20) -> list[JobInfo]:
        with self.engine.connect() as conn:
            ids = conn.execute(select(Job.id).order_by(Job.created_at.desc()).limit(limit)).scalars().all()
        return [self.status(i, explain=False) for i in ids]

    def results(self, job_id: str, include_input: bool = False) -> Iterator[dict[str, Any]]:
        """One row per item, in input order, streamed from the database."""
        self.status(job_id, explain=False)
        t = Item.__table__
        cols = [t.c.item, t.c.status, t.c.label, t.c.score, t.c.output, t.c.embedding, t.c.error]
        if include_input:
            cols.append(t.c.input)
        query = select(*cols).where(t.c.job_id == job_id).order_by(t.c.item)
        with self.engine.connect().execution_options(yield_per=1000) as conn:
            for row in conn.execute(query):
                out = {
                    "item": row.item, "status": row.status, "label": row.label, "score": row.score,
                    "output": row.output, "error": row.error,
                }  # fmt: skip
                if row.embedding is not None:
                    out["embedding"] = np.frombuffer(row.embedding, dtype="<f4").tolist()
                if include_input:
                    out["input"] = row.input
                yield out
