"""Result rows as a streamed HTTP body: NDJSON (one JSON object per line) or CSV.

The rows come from the ledger's paged iterator, so a million-item job streams in constant memory;
the CSV has the CLI's columns and cells (:data:`~sluice.ledger.RESULT_COLUMNS`, :func:`~sluice.ledger.csv_cells`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.responses import StreamingResponse

from sluice.ledger import RESULT_COLUMNS, csv_cells

#: rows per write: enough to keep the socket busy, few enough to stay small
ROWS_PER_WRITE = 64


class ResultsResponse(StreamingResponse):
    media_type = "application/x-ndjson"


def _ndjson(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    lines: list[str] = []
    for row in rows:
        lines.append(json.dumps(row, ensure_ascii=False))
        if len(lines) >= ROWS_PER_WRITE:
            yield ("\n".join(lines) + "\n").encode("utf-8")
            lines.clear()
    if lines:
        yield ("\n".join(lines) + "\n").encode("utf-8")


def _csv(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RESULT_COLUMNS)
    for n, row in enumerate(rows, start=1):
        writer.writerow(csv_cells(row))
        if n % ROWS_PER_WRITE == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def result_stream(rows: Iterable[dict[str, Any]], as_csv: bool) -> ResultsResponse:
    if as_csv:
        return ResultsResponse(_csv(rows), media_type="text/csv; charset=utf-8")
    return ResultsResponse(_ndjson(rows))
