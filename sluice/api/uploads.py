"""Streaming ``multipart/form-data``: a request's fields and its one file, read as they arrive.

Starlette's form parser spools every file to a temporary file first; here the file's bytes are
handed on in pieces as they come, so an upload goes straight into the database
(:func:`receive_file`, ``POST /v1/files``) or into a temporary input file for ``read_input``
(:func:`receive_input`, ``POST /jobs``) in constant memory, and the slow part (database writes)
runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sluice.api.errors import BadRequest, UnsupportedMediaType

#: bytes handed on at a time (and the size of a stored file part)
PIECE = 2**20
#: longest ordinary (non-file) form field
FIELD_LIMIT = 64 * 2**10


@dataclass
class _Events:
    """What the parser's callbacks saw since the last chunk: ("field", name, value), ("file", name,
    filename), ("data", bytes), ("end",)."""

    queue: list[tuple[Any, ...]] = field(default_factory=list)
    header: bytes = b""
    value: bytes = b""
    disposition: bytes = b""
    in_file: bool = False
    name: str = ""
    data: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
        }  # fmt: skip

    def _begin(self) -> None:
        self.disposition, self.in_file, self.data = b"", False, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = self.value
        self.header, self.value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self.in_file = True
            self.queue.append(("file", self.name, options[b"filename"].decode("utf-8", "replace")))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.queue.append(("data", bytes(data[start:end])))
            return
        self.data += data[start:end]
        if len(self.data) > FIELD_LIMIT:
            raise BadRequest(f"form field {self.name!r} is over {FIELD_LIMIT:,} bytes")

    def _end(self) -> None:
        if self.in_file:
            self.queue.append(("end",))
        else:
            self.queue.append(("field", self.name, self.data.decode("utf-8", "replace")))


async def events(request: Request) -> AsyncIterator[tuple[Any, ...]]:
    """The form's events in order, parsed chunk by chunk from the request stream."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMediaType("expected a multipart/form-data upload")
    seen = _Events()
    parser = MultipartParser(options[b"boundary"], seen.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            for event in seen.queue:
                yield event
            seen.queue.clear()
        parser.finalize()
    except FormParserError as exc:
        raise BadRequest(f"malformed multipart upload ({exc})") from None
    for event in seen.queue:
        yield event


@dataclass
class Form:
    """A form's ordinary fields, and the name of its one file."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


async def receive(request: Request, file_field: str, sink: Callable[[bytes], None]) -> Form:
    """Read the form, passing the ``file_field`` file's bytes to ``sink`` (on a worker thread) in
    pieces of about :data:`PIECE` bytes; the ordinary fields and the file name are returned."""
    form = Form()
    buffer = bytearray()
    async for event in events(request):
        if event[0] == "field":
            form.fields[event[1]] = event[2]
        elif event[0] == "file":
            if event[1] != file_field or form.filename is not None:
                raise BadRequest(f"send exactly one file, in the form field {file_field!r}", param=file_field)
            form.filename = event[2]
        elif event[0] == "data":
            buffer += event[1]
            if len(buffer) >= PIECE:
                await run_in_threadpool(sink, bytes(buffer))
                buffer.clear()
    if buffer:
        await run_in_threadpool(sink, bytes(buffer))
    if form.filename is None:
        raise BadRequest(f"no file: send it in the multipart form field {file_field!r}", param=file_field)
    return form


def safe_name(filename: str, default: str) -> str:
    """The last component of an uploaded file's name (never a path), or ``default``."""
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    return name if name not in ("", ".", "..") else default


async def receive_input(request: Request, workdir: Path) -> tuple[Path, Form]:
    """A ``POST /jobs`` upload written to ``workdir`` under its own file name (so ``read_input``
    picks the reader by its extension and names it in messages exactly as the CLI does)."""
    handle = tempfile.NamedTemporaryFile(dir=workdir, delete=False)  # noqa: SIM115 (closed below)

    def write(piece: bytes) -> None:
        handle.write(piece)

    try:
        form = await receive(request, "file", write)
    finally:
        handle.close()
    target = workdir / safe_name(form.filename or "", "upload.txt")
    Path(handle.name).rename(target)
    return target, form
