"""The result row codec, written once: an :class:`ItemResult` to the columns of ``items`` and a
stored row back to what clients, the CLI and exports show.

Scores are real columns (``label``, ``score``) so users can query them with SQL; the full
task-specific result is JSON in ``output``; embeddings are little-endian float32 bytes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import numpy as np

from sluice.db import LABEL_CHARS
from sluice.families.base import ItemResult
from sluice.status import ItemStatus, JobStatus

#: Jobs that still have work to do: workers claim only their chunks, recovery resends only theirs.
ACTIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

#: The columns of a result row, in the order the CSV export writes them.
RESULT_COLUMNS = ("item", "key", "status", "label", "score", "output", "error")


def encode_embedding(vector: Any) -> bytes:
    """An embedding as stored: contiguous little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_embedding(blob: bytes, rows: int | None = None) -> list[Any]:
    """Stored embedding bytes as a list of Python floats (JSON-ready); as ``rows`` lists of floats
    when the item embedded several texts (its ``output["n_texts"]``)."""
    vector = np.frombuffer(blob, dtype="<f4")
    return (vector if rows is None else vector.reshape(rows, -1)).tolist()  # type: ignore[no-any-return]


def embedding_rows(output: dict[str, Any] | None) -> int | None:
    """How many embeddings an item's stored vector holds: ``n_texts`` for a ``texts`` item, else None (one)."""
    n = (output or {}).get("n_texts")
    return int(n) if isinstance(n, int) else None


def result_params(job_id: str, r: ItemResult, worker: str | None, now: datetime) -> dict[str, Any]:
    """Bind parameters of one item's result write (keys as the write statements name them)."""
    return {
        "b_job": job_id,
        "b_item": r.item,
        "b_status": (ItemStatus.FAILED if r.error else ItemStatus.DONE).value,
        "b_label": None if r.label is None else r.label[:LABEL_CHARS],
        "b_score": None if r.score is None else float(r.score),  # numpy scalars: no driver adapts them
        "b_output": r.output,
        "b_embedding": None if r.embedding is None else encode_embedding(r.embedding),
        "b_error": r.error,
        "b_tokens": None if r.n_tokens is None else int(r.n_tokens),
        "b_ms": None if r.compute_ms is None else float(r.compute_ms),
        "b_worker": worker,
        "b_at": now,
        # not a column: the item's binary results, inserted only if this row is written (ledger.artifacts)
        "b_artifacts": r.artifacts,
    }


def result_row(row: Any, include_input: bool = False) -> dict[str, Any]:
    """A stored item as clients see it: the result columns, ``embedding`` when there is one."""
    out = {name: getattr(row, name) for name in RESULT_COLUMNS}
    if row.embedding is not None:
        out["embedding"] = decode_embedding(row.embedding, embedding_rows(row.output))
    if include_input:
        out["input"] = row.input
    return out


def csv_cells(row: dict[str, Any]) -> list[Any]:
    """A result row as CSV cells: ``output`` as JSON (an embedding's values when it has one)."""
    output = row["output"] if "embedding" not in row else {"embedding": row["embedding"]}
    return [
        row["item"], row["key"] or "", row["status"], row["label"] or "", "" if row["score"] is None else row["score"],
        "" if output is None else json.dumps(output), row["error"] or "",
    ]  # fmt: skip
