"""OpenAI-style batches: an uploaded request file run as one ordinary Sluice job.

The batch state machine, each transition one conditional UPDATE naming the state it leaves, so
of two API replicas acting on the same batch exactly one moves it:

=================================  ============================================================
from -> to                         when (method)
=================================  ============================================================
(new) -> validating                created (:meth:`create_batch`)
validating -> in_progress          every line valid, its job stored (:meth:`start_batch`)
validating -> failed               a line is invalid, or validation stalled (:meth:`fail_batch`)
validating -> cancelled            cancelled before its job existed (:meth:`cancel_batch`)
in_progress -> cancelling          cancelled; its job is cancelled in the same transaction
in_progress -> finalizing          its job ended, or its window passed (job cancelled, drained)
cancelling (+ outcome)             its job drained: no chunk still running (:meth:`claim_finalize`)
finalizing|cancelling -> outcome   its output files are sized and recorded (:meth:`finish_batch`)
=================================  ============================================================

Output and error files have no stored bytes: they are generated from the job's items when read,
so the batch's results exist once. Finalizing only measures them (``files.bytes``), under a
lease that another replica takes over if it goes stale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from sluice.clock import utcnow
from sluice.db import batches_table, chunks_table, items_table
from sluice.ledger.api import ApiLedger, FileInfo, beyond
from sluice.ledger.transitions import cancel_job
from sluice.status import ChunkStatus

batches = batches_table
chunks = chunks_table
items = items_table

#: terminal batch statuses
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchInfo:
    """A batch's row (``metadata`` is ``batch_metadata`` here, the column keeps OpenAI's name)."""

    id: str
    owner: str | None
    endpoint: str
    model: str | None
    input_file_id: str
    completion_window: str
    status: str
    outcome: str | None
    job_id: str | None
    batch_metadata: dict[str, Any] | None
    errors: list[dict[str, Any]] | None
    request_total: int
    request_completed: int
    request_failed: int
    output_file_id: str | None
    error_file_id: str | None
    finalize_lease: str | None
    finalize_lease_at: datetime | None
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None


_COLUMNS = [f.name for f in fields(BatchInfo)]


def _batch(row: Any) -> BatchInfo:
    values = dict(row._mapping)
    values["batch_metadata"] = values.pop("metadata")
    return BatchInfo(**{name: values[name] for name in _COLUMNS})


class BatchesLedger(ApiLedger):
    def create_batch(self, values: dict[str, Any]) -> BatchInfo:
        """Store a new batch (``validating``) from its column values; returns it."""
        row = {"status": "validating", "request_total": 0, "request_completed": 0, "request_failed": 0, **values}
        if "batch_metadata" in row:
            row["metadata"] = row.pop("batch_metadata")
        with self.engine.begin() as conn:
            conn.execute(insert(batches).values(**row))
            return _batch(conn.execute(select(batches).where(batches.c.id == row["id"])).one())

    def batch(self, batch_id: str) -> BatchInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).one_or_none()
        return None if row is None else _batch(row)

    def batches_page(self, owner: str | None, after: str | None, limit: int) -> list[BatchInfo]:
        """Batches newest first, ``limit`` after batch ``after``; ``owner``'s only unless None."""
        query = select(batches)
        if owner is not None:
            query = query.where(batches.c.owner == owner)
        with self.engine.connect() as conn:
            if after is not None:
                cursor = conn.execute(select(batches.c.created_at, batches.c.id).where(batches.c.id == after)).first()
                if cursor is None:
                    return []
                query = query.where(beyond((batches.c.created_at, batches.c.id), tuple(cursor), ascending=False))
            order = (batches.c.created_at.desc(), batches.c.id.desc())
            return [_batch(r) for r in conn.execute(query.order_by(*order).limit(limit))]

    def start_batch(self, batch_id: str, model: str, total: int) -> bool:
        """validating -> in_progress, its job stored; False when it left validating meanwhile (cancelled)."""
        with self.engine.begin() as conn:
            res = conn.execute(update(batches).where(batches.c.id == batch_id, batches.c.status == "validating")
                               .values(status="in_progress", in_progress_at=utcnow(), model=model,
                                       request_total=total))  # fmt: skip
        return bool(res.rowcount)

    def fail_batch(self, batch_id: str, errors: list[dict[str, Any]], created_before: datetime | None = None) -> bool:
        """validating -> failed with ``errors``; only if created before ``created_before`` when given (stalled)."""
        cond = [batches.c.id == batch_id, batches.c.status == "validating"]
        if created_before is not None:
            cond.append(batches.c.created_at < created_before)
        with self.engine.begin() as conn:
            res = conn.execute(update(batches).where(*cond).values(status="failed", failed_at=utcnow(), errors=errors))
        return bool(res.rowcount)

    def cancel_batch(self, batch_id: str) -> bool:
        """validating -> cancelled, or in_progress -> cancelling with its job cancelled; False if neither."""
        now = utcnow()
        with self.engine.begin() as conn:
            early = update(batches).where(batches.c.id == batch_id, batches.c.status == "validating")
            if conn.execute(early.values(status="cancelled", cancelling_at=now, cancelled_at=now)).rowcount:
                return True
            running = update(batches).where(batches.c.id == batch_id, batches.c.status == "in_progress",
                                            batches.c.outcome.is_(None))  # fmt: skip
            if not conn.execute(running.values(status="cancelling", cancelling_at=now)).rowcount:
                return False
            job_id = conn.execute(select(batches.c.job_id).where(batches.c.id == batch_id)).scalar_one()
            if job_id:
                cancel_job(conn, job_id)
        return True

    def job_draining(self, job_id: str) -> bool:
        """Whether a chunk of the job is still running under a fresh lease (a worker may still write to it)."""
        fresh = utcnow() - timedelta(seconds=self.lease_seconds)
        query = select(chunks.c.idx).where(chunks.c.job_id == job_id, chunks.c.status == ChunkStatus.RUNNING.value,
                                           chunks.c.leased_at >= fresh).limit(1)  # fmt: skip
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def claim_finalize(self, batch: BatchInfo, outcome: str, lease: str, stale_before: datetime) -> bool:
        """Take the finalize lease: the first time (recording ``outcome``; a batch not cancelling shows
        ``finalizing``), or from a holder whose lease is older than ``stale_before``."""
        now = utcnow()
        values: dict[str, Any] = {"outcome": outcome, "finalize_lease": lease, "finalize_lease_at": now}
        if batch.status != "cancelling":
            values.update(status="finalizing", finalizing_at=batch.finalizing_at or now)
        free = or_(batches.c.outcome.is_(None), batches.c.finalize_lease_at < stale_before)
        cond = and_(batches.c.id == batch.id, batches.c.status == batch.status, free)
        with self.engine.begin() as conn:
            return bool(conn.execute(update(batches).where(cond).values(**values)).rowcount)

    def finish_batch(self, batch_id: str, lease: str, counts: tuple[int, int, int], made: Sequence[FileInfo]) -> bool:
        """finalizing|cancelling -> its outcome, with request counts ``(total, completed, failed)`` and
        its generated files recorded, if ``lease`` still holds; one transaction."""
        batch = self.batch(batch_id)
        if batch is None or batch.outcome is None:
            return False
        now = utcnow()
        ids = {f.kind: f.id for f in made}
        values = {"status": batch.outcome, f"{batch.outcome}_at": now, "output_file_id": ids.get("output"),
                  "error_file_id": ids.get("error"), "request_total": counts[0], "request_completed": counts[1],
                  "request_failed": counts[2], "finalize_lease": None}  # fmt: skip
        with self.engine.begin() as conn:
            mine = update(batches).where(batches.c.id == batch_id, batches.c.finalize_lease == lease)
            if not conn.execute(mine.values(**values)).rowcount:
                return False
            for info in made:
                self.add_generated_file(conn, info)
        return True

    def output_rows(self, job_id: str, statuses: Sequence[str], with_input: bool = False) -> Iterator[Any]:
        """A batch job's items in ``statuses``, in input order, streamed in pages: item, key, status,
        output, embedding (raw bytes), error, n_tokens, finished_at (and input)."""
        cols = [items.c.item, items.c.key, items.c.status, items.c.output, items.c.embedding, items.c.error,
                items.c.n_tokens, items.c.finished_at]  # fmt: skip
        if with_input:
            cols.append(items.c.input)
        query = select(*cols).where(items.c.job_id == job_id, items.c.status.in_(list(statuses))).order_by(items.c.item)
        with self.engine.connect().execution_options(yield_per=500) as conn:
            yield from conn.execute(query)
