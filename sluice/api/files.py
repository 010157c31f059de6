"""OpenAI Files API (``/v1/files``): batch input files stored in the database, and batch outputs.

An upload streams into ``file_parts`` rows of about a MiB as it arrives (never whole in memory,
never on local disk), each line checked to be a JSON object, within ``SLUICE_API_MAX_FILE_BYTES``
(200 MB) and ``SLUICE_API_MAX_FILE_LINES`` (50,000 request lines). Output and error files of a
batch are generated from its job's items when downloaded.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from sluice.api import uploads
from sluice.api.auth import Principal, Reader, Submitter
from sluice.api.batch_output import render
from sluice.api.context import Context, Ctx, get_ctx, plausible_id, unix
from sluice.api.errors import BadRequest, NotFound, PayloadTooLarge
from sluice.api.lifecycle import new_id
from sluice.api.schemas import OPENAI_ERRORS, FileDeleted, FileList, FileObject
from sluice.clock import utcnow
from sluice.ledger import FileInfo

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)


def file_object(info: FileInfo) -> FileObject:
    return FileObject(id=info.id, bytes=info.bytes, created_at=unix(info.created_at) or 0, filename=info.filename,
                      purpose="batch_output" if info.purpose == "batch_output" else "batch")  # fmt: skip


def owned_file(ctx: Context, file_id: str, who: Principal) -> FileInfo:
    """The file if the caller may see it; 404 otherwise, as for a file that does not exist."""
    info = ctx.ledger.file(file_id) if plausible_id(file_id) else None
    if info is None or not who.may_see(info.owner):
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return info


class LineChecker:
    """The sink of an upload: stores each piece as a part, counts request lines and checks each is
    a JSON object, carrying a line split between pieces over (runs on worker threads)."""

    def __init__(self, ctx: Context, file_id: str) -> None:
        self.ctx, self.file_id = ctx, file_id
        self.settings = ctx.settings
        self.parts = self.size = self.number = self.requests = 0
        self.carry = b""

    def __call__(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.settings.api_max_file_bytes:
            raise PayloadTooLarge(f"the file is over the limit of {self.settings.api_max_file_bytes:,} bytes "
                                  "(SLUICE_API_MAX_FILE_BYTES); split it into several batches")  # fmt: skip
        self.ctx.ledger.add_file_part(self.file_id, self.parts, piece)
        self.parts += 1
        *complete, self.carry = (self.carry + piece).split(b"\n")
        for raw in complete:
            self._line(raw)
        if len(self.carry) > 4 * self.settings.max_item_chars + 2**20:
            raise PayloadTooLarge(f"line {self.number + 1} is longer than any request may be")

    def finish(self) -> None:
        if self.carry:
            self._line(self.carry)
        if not self.requests:
            raise BadRequest("the file has no request lines", param="file")

    def _line(self, raw: bytes) -> None:
        self.number += 1
        if not raw.strip():
            return
        self.requests += 1
        if self.requests > self.settings.api_max_file_lines:
            raise PayloadTooLarge(f"the file has over {self.settings.api_max_file_lines:,} request lines "
                                  "(SLUICE_API_MAX_FILE_LINES); split it into several batches")  # fmt: skip
        try:
            ok = isinstance(json.loads(raw), dict)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise BadRequest(f"line {self.number} is not a JSON object; a batch file has one request per line",
                             param="file")  # fmt: skip


@router.post("/files", response_model=FileObject)
async def upload(request: Request, who: Submitter) -> FileObject:
    """Upload a batch input file (multipart ``file`` and ``purpose="batch"``), streamed into the database."""
    ctx = get_ctx(request)
    file_id = new_id("file-")
    await run_in_threadpool(ctx.ledger.purge_uploads, utcnow() - timedelta(days=1))
    await run_in_threadpool(ctx.ledger.begin_file, file_id, who.owner, "upload.jsonl")
    sink = LineChecker(ctx, file_id)
    try:
        form = await uploads.receive(request, "file", sink)
        await run_in_threadpool(sink.finish)
        if form.fields.get("purpose") != "batch":
            raise BadRequest(f'purpose must be "batch" (got {form.fields.get("purpose")!r})', param="purpose")
        name = uploads.safe_name(form.filename or "", "upload.jsonl")
        info = await run_in_threadpool(ctx.ledger.finish_file, file_id, "batch", name, sink.size, sink.requests)
    except Exception:  # a dropped connection leaves an upload that purge_uploads removes a day later
        await run_in_threadpool(ctx.ledger.delete_file, file_id)
        raise
    return file_object(info)


@router.get("/files", response_model=FileList)
def list_files(
    ctx: Ctx,
    who: Reader,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FileList:
    if (after is not None and not plausible_id(after)) or purpose not in (None, "batch", "batch_output"):
        return FileList(data=[], first_id=None, last_id=None, has_more=False)
    found = ctx.ledger.files_page(who.sees, purpose, after, limit + 1, ascending=order == "asc")
    page = [file_object(f) for f in found[:limit]]
    return FileList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                    has_more=len(found) > limit)  # fmt: skip


@router.get("/files/{file_id}", response_model=FileObject)
def get_file(file_id: str, ctx: Ctx, who: Reader) -> FileObject:
    return file_object(owned_file(ctx, file_id, who))


@router.get(
    "/files/{file_id}/content", responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}}
)
def file_content(file_id: str, ctx: Ctx, who: Reader) -> StreamingResponse:
    """The file's bytes: an upload's parts in order, or a batch's output generated from its items."""
    info = owned_file(ctx, file_id, who)
    body: Any
    if info.batch_id is None:
        body = ctx.ledger.file_parts(info.id)
    else:
        batch = ctx.ledger.batch(info.batch_id)
        if batch is None:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        body = render(ctx.ledger, batch, info.kind or "output")
    headers = {"Content-Disposition": f'attachment; filename="{info.filename}"'}
    return StreamingResponse(body, media_type="application/jsonl", headers=headers)


@router.delete("/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, ctx: Ctx, who: Submitter) -> FileDeleted:
    info = owned_file(ctx, file_id, who)
    return FileDeleted(id=info.id, deleted=ctx.ledger.delete_file(info.id))
