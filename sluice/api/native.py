"""The native routes: submit jobs (JSON or a file upload), follow them, stream their results.

Submitting goes through :class:`producer.client.Client`, the CLI's own path, so input is
validated the same way, rejected with exactly the CLI's message (422) and nothing is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as FastApiPath
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError as PydanticValidationError

from producer.artifact_files import extension
from producer.inputs import read_input
from sluice.api import limits, uploads
from sluice.api.auth import Principal, Reader, Submitter
from sluice.api.context import Context, Ctx, get_ctx, iso, plausible_id
from sluice.api.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from sluice.api.results import ResultsResponse, result_stream
from sluice.api.schemas import Cancelled, ErrorOut, JobList, JobOut, JobSubmit, ModelList, ModelOut
from sluice.errors import ValidationError
from sluice.ledger import JobInfo
from sluice.registry import load_registry

router = APIRouter()

#: the error answers every authenticated route may give, for the OpenAPI document
_WHY = {401: "No valid API key", 403: "The key lacks the scope", 404: "No such job (or not yours)",
        422: "Invalid input", 503: "Database or Redis unreachable"}  # fmt: skip
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": why} for code, why in _WHY.items()}
_SUBMIT_WHY = {400: "Malformed upload", 413: "Over a size limit", 415: "Neither JSON nor multipart",
               429: "Too many queued items; see Retry-After"}  # fmt: skip
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **{code: {"model": ErrorOut, "description": why} for code, why in _SUBMIT_WHY.items()},
}
SUBMIT_BODY = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": JobSubmit.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file", "model"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "A .jsonl, .csv or .txt input file"},
            "model": {"type": "string"}, "params": {"type": "string", "description": "Job params as a JSON object"},
            "priority": {"type": "integer"}, "callback_url": {"type": "string"}}}},
    }}
}  # fmt: skip


def job_out(info: JobInfo, counts: dict[str, int] | None = None, warning: str | None = None) -> JobOut:
    return JobOut(
        id=info.id, model=info.model, task=info.task, status=info.status.value, priority=info.priority,
        total=info.total, done=info.done, failed=info.failed, pending=info.pending,
        progress=info.finished / info.total if info.total else 1.0, items_per_s=info.items_per_s,
        elapsed_s=info.elapsed_s, created_at=iso(info.created_at) or "", started_at=iso(info.started_at),
        finished_at=iso(info.finished_at), waiting_reason=info.waiting_reason, counts=counts, warning=warning,
    )  # fmt: skip


@router.post("/jobs", status_code=201, response_model=JobOut, responses=SUBMIT_ERRORS, openapi_extra=SUBMIT_BODY)
async def submit(request: Request, response: Response, who: Submitter) -> JobOut:
    """Submit a job: JSON ``{"model", "items", "params", "priority", "callback_url"}``, or a multipart
    upload of a .jsonl/.csv/.txt file with ``model``, ``params`` (a JSON object), ``priority`` and
    ``callback_url`` fields."""
    ctx = get_ctx(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        job_id = await _submit_json(ctx, request, who)
    elif kind == "multipart/form-data":
        with tempfile.TemporaryDirectory(prefix="sluice-upload-") as workdir:
            job_id = await _submit_file(ctx, request, who, Path(workdir))
    else:
        raise UnsupportedMediaType("send the job as application/json or as a multipart/form-data file upload")
    info = await run_in_threadpool(ctx.client.status, job_id, False)
    response.headers["Location"] = f"/jobs/{job_id}"
    return job_out(info, warning=ctx.client.unsent.pop(job_id, None))


async def _submit_json(ctx: Context, request: Request, who: Principal) -> str:
    try:
        body = JobSubmit.model_validate(json.loads(await request.body()))
    except (ValueError, RecursionError, PydanticValidationError) as exc:
        raise ValidationError(f"the body is not a job: {_first_problem(exc)}") from None
    if len(body.items) > ctx.settings.api_max_job_items:
        raise PayloadTooLarge(limits.too_many_items(ctx.settings.api_max_job_items))

    def run() -> str:
        limits.check_room(ctx.ledger, who.owner, len(body.items), ctx.settings)
        return ctx.client.submit(body.model, body.items, body.params, body.priority, owner=who.owner,
                                 callback_url=body.callback_url)  # fmt: skip

    return await run_in_threadpool(run)


async def _submit_file(ctx: Context, request: Request, who: Principal, workdir: Path) -> str:
    path, form = await uploads.receive_input(request, workdir)
    model = form.fields.get("model") or ""
    if not model:
        raise BadRequest("the form has no 'model' field", param="model")
    try:
        params = json.loads(form.fields.get("params") or "{}")
        priority = int(form.fields.get("priority") or 0)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"'params' must be a JSON object and 'priority' a whole number 0-9 ({exc})") from None
    settings = ctx.settings

    def run() -> str:
        room = limits.queue_room(ctx.ledger, who.owner, settings)
        items = limits.capped(read_input(path), settings.api_max_job_items, room, settings.api_retry_after)
        return ctx.client.submit(model, items, params, priority, owner=who.owner,
                                 callback_url=form.fields.get("callback_url") or None)  # fmt: skip

    return await run_in_threadpool(run)


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, PydanticValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"
    return str(exc)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def job_status(job_id: str, ctx: Ctx, who: Reader) -> JobOut:
    """Counts by status, progress, items/s, timing, and why it waits if no live worker serves it."""
    info = ctx.owned_job(job_id, who.sees, explain=True)
    return job_out(info, counts=ctx.client.item_counts(job_id))


RESULTS_200 = {
    "description": "One row per item in input order: NDJSON, or CSV by Accept or ?format=csv",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}},
}


@router.get("/jobs/{job_id}/results", responses={**ERRORS, 200: RESULTS_200})
def job_results(
    request: Request,
    job_id: str,
    ctx: Ctx,
    who: Reader,
    format: Literal["jsonl", "csv"] | None = None,
    status: Literal["pending", "done", "failed"] | None = None,
    after: Annotated[int | None, Query(ge=-1, le=2**31 - 1, description="Only items after this one (paging)")] = None,
    limit: Annotated[int | None, Query(ge=1, le=10**7)] = None,
) -> ResultsResponse:
    """One row per item, in input order, streamed from the database in constant memory."""
    ctx.owned_job(job_id, who.sees)
    csv_wanted = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    rows = ctx.client.ledger.results(job_id, status=status, after=after, limit=limit)
    return result_stream(rows, csv_wanted)


ARTIFACT_200 = {
    "description": "The artifact's bytes, with its media type (audio/wav, image/png, application/x-npy, ...)",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


@router.get("/jobs/{job_id}/items/{item}/artifacts/{n}", responses={**ERRORS, 200: ARTIFACT_200})
def artifact(
    job_id: str,
    item: Annotated[int, FastApiPath(ge=0, le=2**31 - 1)],
    n: Annotated[int, FastApiPath(ge=0, le=2**31 - 1)],
    ctx: Ctx,
    who: Reader,
) -> Response:
    """One binary result of an item (a WAV, a mask, a depth map): the ``n`` of an entry in its result
    row's ``artifacts`` summary. Served as a download, never sniffed as another type."""
    ctx.owned_job(job_id, who.sees)
    found = ctx.ledger.artifact(job_id, item, n)
    if found is None:
        raise NotFound(f"item {item} of job {job_id} has no artifact {n}; its result row lists those it has")
    name = f"{item}-{n}.{extension(found.media_type)}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Content-Type-Options": "nosniff"}
    return Response(content=found.data, media_type=found.media_type, headers=headers)


@router.post("/jobs/{job_id}/cancel", response_model=Cancelled, responses=ERRORS)
def cancel(job_id: str, ctx: Ctx, who: Submitter) -> Cancelled:
    """Cancel a job; workers stop at their next batch. ``cancelled`` is False if it had already ended."""
    ctx.owned_job(job_id, who.sees)
    done = ctx.ledger.cancel(job_id)
    return Cancelled(id=job_id, cancelled=done, status=ctx.client.status(job_id, explain=False).status.value)


@router.get("/jobs", response_model=JobList, responses=ERRORS)
def jobs(
    ctx: Ctx,
    who: Reader,
    status: Literal["queued", "running", "completed", "failed", "cancelled"] | None = None,
    after: Annotated[str | None, Query(max_length=64, description="The last job id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """Your jobs (an admin key: everyone's), newest first, ``limit`` per page."""
    found = ctx.ledger.jobs_page(who.sees, status, after, limit + 1) if after is None or plausible_id(after) else []
    page = found[:limit]
    return JobList(data=[job_out(j) for j in page], has_more=len(found) > limit, last_id=page[-1].id if page else None)


@router.get("/models", response_model=ModelList, responses=ERRORS)
def models(ctx: Ctx, who: Reader) -> ModelList:
    """The registered models and their tasks."""
    registry = load_registry(ctx.settings.models_file)
    return ModelList(data=[ModelOut(name=s.name, task=s.task, max_length=s.max_length) for s in registry])
