"""OpenAI Batch API (``/v1/batches``): create, retrieve, cancel and list batches.

A batch is an ordinary Sluice job (so it coalesces with other work); this module maps the
batch rows and their job's counters to OpenAI's ``Batch`` object, and lets each read move the
batch on (:class:`~sluice.api.lifecycle.Batches`); finalizing runs after the answer is sent.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query

from sluice.api.auth import Principal, Reader, Submitter
from sluice.api.context import Context, Ctx, plausible_id, unix
from sluice.api.errors import BadRequest, NotFound
from sluice.api.files import owned_file
from sluice.api.lifecycle import Batches
from sluice.api.limits import check_room
from sluice.api.schemas import OPENAI_ERRORS, BatchCreate, BatchError, BatchErrors, BatchList, BatchOut, RequestCounts
from sluice.ledger import BatchInfo

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)
_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def batch_out(ctx: Context, batch: BatchInfo) -> BatchOut:
    """OpenAI's Batch object; counts come from the job while it runs, from the batch once final."""
    total, completed, failed = batch.request_total, batch.request_completed, batch.request_failed
    if batch.status in ("in_progress", "finalizing", "cancelling") and batch.job_id:
        job = ctx.ledger.job(batch.job_id)
        if job is not None:
            total, completed, failed = job.total, job.done, job.failed
    errors = BatchErrors(data=[BatchError(**e) for e in batch.errors]) if batch.errors else None
    stamps = {f"{name}_at": unix(getattr(batch, f"{name}_at")) for name in _STAMPS}
    return BatchOut(
        id=batch.id, endpoint=batch.endpoint, model=batch.model, errors=errors, input_file_id=batch.input_file_id,
        completion_window=batch.completion_window, status=batch.status, output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id, created_at=unix(batch.created_at) or 0, expires_at=unix(batch.expires_at),
        request_counts=RequestCounts(total=total, completed=completed, failed=failed), metadata=batch.batch_metadata,
        **stamps,
    )  # fmt: skip


def owned_batch(ctx: Context, batch_id: str, who: Principal) -> BatchInfo:
    batch = ctx.ledger.batch(batch_id) if plausible_id(batch_id) else None
    if batch is None or not who.may_see(batch.owner):
        raise NotFound(f"no batch {batch_id!r}", param="batch_id")
    return batch


def refreshed(ctx: Context, batch: BatchInfo, tasks: BackgroundTasks) -> BatchOut:
    """The batch moved on as far as it can, finalizing scheduled after the answer when it is due."""
    runner = Batches(ctx)
    batch, lease = runner.refresh(batch)
    if lease is not None:
        tasks.add_task(runner.finalize, batch.id, lease)
    return batch_out(ctx, batch)


@router.post("/batches", response_model=BatchOut)
def create_batch(body: BatchCreate, tasks: BackgroundTasks, ctx: Ctx, who: Submitter) -> BatchOut:
    """Create a batch from an uploaded file; it is validated after this answers (status validating)."""
    if body.metadata is not None and (len(body.metadata) > 16 or any(
            len(k) > 64 or len(v) > 512 for k, v in body.metadata.items())):  # fmt: skip
        raise BadRequest("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters",
                         param="metadata")  # fmt: skip
    file = owned_file(ctx, body.input_file_id, who)
    check_room(ctx.ledger, who.owner, file.lines, ctx.settings)
    runner = Batches(ctx)
    batch = runner.create(who.owner, file, body.endpoint, body.completion_window, body.metadata)
    tasks.add_task(runner.validate, batch.id)
    return batch_out(ctx, batch)


@router.get("/batches/{batch_id}", response_model=BatchOut)
def get_batch(batch_id: str, tasks: BackgroundTasks, ctx: Ctx, who: Reader) -> BatchOut:
    return refreshed(ctx, owned_batch(ctx, batch_id, who), tasks)


@router.post("/batches/{batch_id}/cancel", response_model=BatchOut)
def cancel_batch(batch_id: str, tasks: BackgroundTasks, ctx: Ctx, who: Submitter) -> BatchOut:
    """Cancel: cancelling until no worker writes to its job any more, then cancelled, with the
    results so far in its output file and the requests never run in its error file."""
    batch = owned_batch(ctx, batch_id, who)
    Batches(ctx).cancel(batch)
    return refreshed(ctx, owned_batch(ctx, batch_id, who), tasks)


@router.get("/batches", response_model=BatchList)
def list_batches(
    tasks: BackgroundTasks,
    ctx: Ctx,
    who: Reader,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    found = ctx.ledger.batches_page(who.sees, after, limit + 1) if after is None or plausible_id(after) else []
    page = [refreshed(ctx, b, tasks) for b in found[:limit]]
    return BatchList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                     has_more=len(found) > limit)  # fmt: skip
