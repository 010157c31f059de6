"""The worker's side of the database contract that makes results exactly-once.

* ``claim`` counts a delivery and takes a lease on the chunk; after ``max_attempts`` deliveries
  its remaining items fail instead (a poison chunk must not kill workers forever).
* ``write_results`` updates only items still pending (on PostgreSQL one statement per batch, on
  SQLite one executemany per outcome) and moves the job counters by the rows actually written,
  in the same transaction, so a redelivered chunk writes nothing twice and counts nothing twice.
* ``close`` marks the chunk done only if the caller still holds the lease it claimed with.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, bindparam, case, select, text, tuple_, update

from sluice.db import LABEL_CHARS, Chunk, Item, Job, as_utc, get_engine, utcnow
from sluice.status import ChunkStatus, ItemStatus, JobStatus
from sluice.families.base import ItemResult

_items = Item.__table__
_jobs = Job.__table__
_chunks = Chunk.__table__


@dataclass
class Claim:
    """A chunk this worker now holds: the job's settings and its still-pending items."""

    job_id: str
    idx: int
    lease: str
    model: str
    params: dict[str, Any]
    items: list[tuple[int, dict[str, Any]]]


_WRITE = (
    update(_items)
    .where(
        and_(
            _items.c.job_id == bindparam("b_job"),
            _items.c.item == bindparam("b_item"),
            _items.c.status == ItemStatus.PENDING.value,
        )
    )
    .values(
        status=bindparam("b_status"),
        label=bindparam("b_label"),
        score=bindparam("b_score"),
        output=bindparam("b_output"),
        embedding=bindparam("b_embedding"),
        error=bindparam("b_error"),
        n_tokens=bindparam("b_tokens"),
        compute_ms=bindparam("b_ms"),
        worker=bindparam("b_worker"),
        finished_at=bindparam("b_at"),
    )
)

# PostgreSQL: a whole batch in one statement, each column passed as one array and joined back
# with unnest(); RETURNING names the rows that were still pending, i.e. actually written. For
# 64-128 rows with 384-float embeddings this is about 1.5x faster than psycopg's pipelined
# executemany and 3x faster than UPDATE ... FROM (VALUES ...) (see bench/store_writes.py), and
# its text never changes, so the server can keep it prepared.
_PG_WRITE = text("""
UPDATE items SET status = v.status, label = v.label, score = v.score, output = CAST(v.output AS JSON),
    embedding = v.embedding, error = v.error, n_tokens = v.n_tokens, compute_ms = v.compute_ms,
    worker = :worker, finished_at = :finished_at
FROM unnest(CAST(:job_id AS VARCHAR[]), CAST(:item AS INTEGER[]), CAST(:status AS VARCHAR[]),
    CAST(:label AS VARCHAR[]), CAST(:score AS FLOAT8[]), CAST(:output AS TEXT[]), CAST(:embedding AS BYTEA[]),
    CAST(:error AS TEXT[]), CAST(:n_tokens AS INTEGER[]), CAST(:compute_ms AS FLOAT8[]))
    AS v(job_id, item, status, label, score, output, embedding, error, n_tokens, compute_ms)
WHERE items.job_id = v.job_id AND items.item = v.item AND items.status = :pending
RETURNING items.job_id, items.status
""")
# unnest() column -> key of a row from _row(); ``output`` is serialised to JSON text separately.
_PG_COLUMNS = {
    "job_id": "b_job", "item": "b_item", "status": "b_status", "label": "b_label", "score": "b_score",
    "embedding": "b_embedding", "error": "b_error", "n_tokens": "b_tokens", "compute_ms": "b_ms",
}  # fmt: skip


class Store:
    def __init__(self, database_url: str, max_attempts: int, lease_seconds: int = 900) -> None:
        self.engine = get_engine(database_url)
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds

    def claim(self, job_id: str, idx: int, worker: str | None = None) -> Claim | None:
        """Take the chunk; None when there is nothing to do.

        Nothing to do: the chunk is done, its job ended, another worker holds a fresh lease on it
        (a coalescing worker took it from the database before its message arrived), or it was
        dead-lettered.
        """
        with self.engine.begin() as conn:
            # One read decides the common no-work case: the message of a chunk a coalescing
            # worker already ran (every single-document job's message ends here).
            chunk = conn.execute(
                select(_chunks, _jobs.c.status.label("job_status"), _jobs.c.model, _jobs.c.params)
                .join(_jobs, _jobs.c.id == _chunks.c.job_id)
                .where(_chunks.c.job_id == job_id, _chunks.c.idx == idx)
            ).one_or_none()  # fmt: skip
            if chunk is None or chunk.status == ChunkStatus.DONE:
                return None
            if JobStatus(chunk.job_status).terminal:
                self._close(conn, job_id, idx, lease=None)
                return None
            if chunk.status == ChunkStatus.RUNNING and not self._lease_expired(chunk.leased_at):
                return None
            lease = str(uuid.uuid4())
            taken = conn.execute(
                update(_chunks)
                .where(_chunks.c.job_id == job_id, _chunks.c.idx == idx, _chunks.c.status == chunk.status,
                       _chunks.c.deliveries == chunk.deliveries)
                .values(status=ChunkStatus.RUNNING.value, deliveries=_chunks.c.deliveries + 1,
                        lease=lease, leased_at=utcnow(), leased_by=worker)
            ).rowcount  # fmt: skip
            if not taken:  # another worker claimed it between our read and our write
                return None
            conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, started_at=utcnow())
            )
            in_chunk = and_(
                _items.c.job_id == job_id,
                _items.c.item >= chunk.start,
                _items.c.item < chunk.stop,
                _items.c.status == ItemStatus.PENDING.value,
            )
            conn.execute(update(_items).where(in_chunk).values(attempts=_items.c.attempts + 1))
            rows = conn.execute(select(_items.c.item, _items.c.input).where(in_chunk).order_by(_items.c.item))
            items = [(r.item, r.input) for r in rows]
        if chunk.deliveries + 1 > self.max_attempts:
            self.dead_letter(job_id, idx, lease, items, chunk.deliveries + 1)
            return None
        return Claim(job_id, idx, lease, chunk.model, chunk.params or {}, items)

    def _lease_expired(self, leased_at: Any) -> bool:
        if leased_at is None:
            return True
        return bool(utcnow() - as_utc(leased_at) > timedelta(seconds=self.lease_seconds))

    def claim_queued(
        self, model: str, exclude: tuple[str, int], max_chunks: int, max_items: int, worker: str | None = None
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
            params = self._coalescing_candidates(conn, model, exclude, max_chunks, max_items)
            chosen = list(params)
            if not chosen:
                return []
            in_chosen = tuple_(_chunks.c.job_id, _chunks.c.idx).in_(chosen)
            conn.execute(
                update(_chunks).where(in_chosen, _chunks.c.status == ChunkStatus.QUEUED.value)
                .values(status=ChunkStatus.RUNNING.value, deliveries=_chunks.c.deliveries + 1,
                        lease=lease, leased_at=now, leased_by=worker)
            )  # fmt: skip
            taken = conn.execute(
                select(_chunks.c.job_id, _chunks.c.idx, _chunks.c.start, _chunks.c.stop, _chunks.c.deliveries)
                .where(in_chosen, _chunks.c.lease == lease)
            ).all()  # fmt: skip
            if not taken:
                return []
            jobs = {r.job_id for r in taken}
            conn.execute(
                update(_jobs).where(_jobs.c.id.in_(jobs), _jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, started_at=now)
            )  # fmt: skip
            keys = [(r.job_id, i) for r in taken for i in range(r.start, r.stop)]
            pending = and_(
                tuple_(_items.c.job_id, _items.c.item).in_(keys), _items.c.status == ItemStatus.PENDING.value
            )
            conn.execute(update(_items).where(pending).values(attempts=_items.c.attempts + 1))
            by_job: dict[str, list[tuple[int, Any]]] = {}
            for row in conn.execute(select(_items.c.job_id, _items.c.item, _items.c.input).where(pending)
                                    .order_by(_items.c.job_id, _items.c.item)):  # fmt: skip
                by_job.setdefault(row.job_id, []).append((row.item, row.input))
        claims = []
        rank = {key: n for n, key in enumerate(chosen)}
        for r in sorted(taken, key=lambda r: rank[r.job_id, r.idx]):
            items = [(i, x) for i, x in by_job.get(r.job_id, []) if r.start <= i < r.stop]
            if r.deliveries > self.max_attempts:
                self.dead_letter(r.job_id, r.idx, lease, items, r.deliveries)
            else:
                claims.append(Claim(r.job_id, r.idx, lease, model, params[r.job_id, r.idx], items))
        return claims

    @staticmethod
    def _coalescing_candidates(
        conn: Connection, model: str, exclude: tuple[str, int], max_chunks: int, max_items: int
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """Queued chunks of active jobs for ``model``, most urgent first, up to the limits, with
        their jobs' params (read here, from the join the choice needs anyway)."""
        query = (
            select(_chunks.c.job_id, _chunks.c.idx, _chunks.c.start, _chunks.c.stop, _jobs.c.params)
            .join(_jobs, _jobs.c.id == _chunks.c.job_id)
            .where(_chunks.c.status == ChunkStatus.QUEUED.value, _jobs.c.model == model,
                   _jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .order_by(_jobs.c.priority.desc(), _jobs.c.created_at, _chunks.c.idx)
            .limit(max_chunks + 1)
        )  # fmt: skip
        chosen: dict[tuple[str, int], dict[str, Any]] = {}
        items = 0
        for r in conn.execute(query):
            size = r.stop - r.start
            # First fit: a chunk that would overflow the window is left to its own message, which
            # also bounds the (job, item) pairs the claim binds to about one chunk's worth.
            if (r.job_id, r.idx) == exclude or items + size > max_items:
                continue
            chosen[r.job_id, r.idx] = r.params or {}
            items += size
            if items >= max_items or len(chosen) >= max_chunks:
                break
        return chosen

    def dead_letter(self, job_id: str, idx: int, lease: str, items: list[tuple[int, Any]], n: int) -> None:
        error = (
            f"chunk {idx} was delivered {n} times without finishing (worker lost each time); "
            f"its items are failed after {self.max_attempts} attempts"
        )
        self.write_results({job_id: [ItemResult(item=i, error=error) for i, _ in items]}, worker=None)
        self.close(job_id, idx, lease)

    def is_cancelled(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            status = conn.execute(select(_jobs.c.status).where(_jobs.c.id == job_id)).scalar_one_or_none()
        return status is None or status == JobStatus.CANCELLED

    def write_results(self, results: dict[str, list[ItemResult]], worker: str | None) -> tuple[int, int]:
        """Store results (by job) for items still pending, in one transaction.

        Returns the (done, failed) rows actually written; each job's counters move by its own.
        """
        now = utcnow()
        rows = [_row(job_id, r, worker, now) for job_id, batch in results.items() for r in batch]
        if not rows:
            return 0, 0
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                written = _write_postgresql(conn, rows, worker, now)
            else:
                written = _write_executemany(conn, rows)
            moved = [
                {"b_id": job_id, "b_done": written[job_id, ItemStatus.DONE.value],
                 "b_failed": written[job_id, ItemStatus.FAILED.value]}
                for job_id in results
            ]  # fmt: skip
            moved = [m for m in moved if m["b_done"] or m["b_failed"]]
            if moved:
                conn.execute(_COUNT, moved)
                _finish_jobs_if_complete(conn, [m["b_id"] for m in moved])
        done = sum(n for (_, status), n in written.items() if status == ItemStatus.DONE.value)
        return done, sum(written.values()) - done

    def release(self, job_id: str, idx: int, lease: str) -> bool:
        """Give a chunk back (queued, no lease) after a failed run, so its redelivery can claim it at once."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(_chunks)
                .where(_chunks.c.job_id == job_id, _chunks.c.idx == idx, _chunks.c.lease == lease,
                       _chunks.c.status == ChunkStatus.RUNNING.value)
                .values(status=ChunkStatus.QUEUED.value, lease=None, leased_at=None, leased_by=None)
            )  # fmt: skip
        return bool(res.rowcount)

    def close_all(self, claims: list[Claim]) -> list[tuple[str, int]]:
        """Mark claimed chunks done where their leases still hold, in one transaction; returns the
        chunks known closed (all of a lease's chunks when its update matched every one of them)."""
        by_lease: dict[str, list[tuple[str, int]]] = {}
        for c in claims:
            by_lease.setdefault(c.lease, []).append((c.job_id, c.idx))
        closed: list[tuple[str, int]] = []
        with self.engine.begin() as conn:
            for lease, chunks in by_lease.items():
                n = conn.execute(
                    update(_chunks)
                    .where(tuple_(_chunks.c.job_id, _chunks.c.idx).in_(chunks), _chunks.c.lease == lease)
                    .values(status=ChunkStatus.DONE.value)
                ).rowcount
                if n == len(chunks):
                    closed += chunks
        return closed

    def close(self, job_id: str, idx: int, lease: str) -> bool:
        with self.engine.begin() as conn:
            return self._close(conn, job_id, idx, lease)

    @staticmethod
    def _close(conn: Connection, job_id: str, idx: int, lease: str | None) -> bool:
        cond = [_chunks.c.job_id == job_id, _chunks.c.idx == idx]
        if lease is not None:
            cond.append(_chunks.c.lease == lease)
        res = conn.execute(update(_chunks).where(*cond).values(status=ChunkStatus.DONE.value))
        return bool(res.rowcount)


# Job counters move by the rows a write actually changed: one executemany for all jobs of a batch.
_COUNT = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"))
    .values(
        done_items=_jobs.c.done_items + bindparam("b_done"), failed_items=_jobs.c.failed_items + bindparam("b_failed")
    )
)


def _finish_jobs_if_complete(conn: Connection, job_ids: list[str]) -> None:
    conn.execute(
        update(_jobs)
        .where(
            _jobs.c.id.in_(job_ids),
            _jobs.c.done_items + _jobs.c.failed_items >= _jobs.c.total_items,
            _jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
        .values(
            status=case((_jobs.c.done_items == 0, JobStatus.FAILED.value), else_=JobStatus.COMPLETED.value),
            finished_at=utcnow(),
        )
    )


def _write_postgresql(
    conn: Connection, rows: list[dict[str, Any]], worker: str | None, now: Any
) -> Counter[tuple[str, str]]:
    """One UPDATE ... FROM unnest(...) RETURNING for the batch; rows written by (job, status)."""
    params: dict[str, Any] = {col: [r[key] for r in rows] for col, key in _PG_COLUMNS.items()}
    params["output"] = [None if r["b_output"] is None else json.dumps(r["b_output"]) for r in rows]
    params.update(worker=worker, finished_at=now, pending=ItemStatus.PENDING.value)
    return Counter((row.job_id, row.status) for row in conn.execute(_PG_WRITE, params))


def _write_executemany(conn: Connection, rows: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """One executemany per (job, outcome): SQLite runs in-process, so a statement per row is cheap."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["b_job"], r["b_status"]), []).append(r)
    # rowcount of an executemany is the sum over its rows: the rows that were still pending.
    return Counter({key: conn.execute(_WRITE, group).rowcount for key, group in groups.items()})


def _row(job_id: str, r: ItemResult, worker: str | None, now: Any) -> dict[str, Any]:
    embedding = None
    if r.embedding is not None:
        embedding = np.ascontiguousarray(r.embedding, dtype="<f4").tobytes()
    return {
        "b_job": job_id,
        "b_item": r.item,
        "b_status": (ItemStatus.FAILED if r.error else ItemStatus.DONE).value,
        "b_label": None if r.label is None else r.label[:LABEL_CHARS],
        "b_score": None if r.score is None else float(r.score),  # numpy scalars: no driver adapts them
        "b_output": r.output,
        "b_embedding": embedding,
        "b_error": r.error,
        "b_tokens": None if r.n_tokens is None else int(r.n_tokens),
        "b_ms": None if r.compute_ms is None else float(r.compute_ms),
        "b_worker": worker,
        "b_at": now,
    }
