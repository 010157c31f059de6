"""OpenAI batch output and error files, generated from the batch job's items whenever they are read.

Nothing is copied: a line is rendered from the item's stored result, in input order, so the file
exists once (in ``items``) and streams in constant memory. Rendering is deterministic (ids are
derived from the batch id and item, ``created`` from when the item finished), so the size measured
when the batch finalizes is the size every later download has.

Output line: ``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}``
with the endpoint's own response body. Error file: items that failed (status 500 with an OpenAI
error body) and, for a cancelled or expired batch, the requests never run (``response`` null,
``error.code`` ``batch_cancelled`` / ``batch_expired``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sluice.api.context import unix
from sluice.ledger import BatchInfo, Ledger

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
LINES_PER_WRITE = 32


def _digest(batch_id: str, item: int) -> str:
    return hashlib.sha256(f"{batch_id}:{item}".encode()).hexdigest()[:24]


def _embeddings(batch: BatchInfo, row: Any, digest: str) -> dict[str, Any]:
    vectors = np.frombuffer(row.embedding or b"", dtype="<f4")
    n = (row.output or {}).get("n_texts")
    rows = vectors.reshape(int(n), -1) if isinstance(n, int) else vectors.reshape(1, -1)
    as_base64 = (row.input or {}).get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.tobytes()).decode("ascii") if as_base64 else v.tolist()}
            for i, v in enumerate(rows)]  # fmt: skip
    tokens = int(row.n_tokens or 0)
    return {"object": "list", "data": data, "model": batch.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _generated(row: Any) -> tuple[str, str, dict[str, int]]:
    """Text, OpenAI finish reason and usage of a text-generation item."""
    output = row.output or {}
    new = int(output.get("n_new_tokens") or 0)
    prompt = max(int(row.n_tokens or 0) - new, 0)
    usage = {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}
    return str(output.get("generated_text", "")), FINISH.get(str(output.get("finish_reason")), "stop"), usage


def _chat(batch: BatchInfo, row: Any, digest: str) -> dict[str, Any]:
    text, finish, usage = _generated(row)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    return {"id": f"chatcmpl-{digest}", "object": "chat.completion", "created": unix(row.finished_at) or 0,
            "model": batch.model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                               "finish_reason": finish}],
            "usage": usage, "system_fingerprint": None}  # fmt: skip


def _completion(batch: BatchInfo, row: Any, digest: str) -> dict[str, Any]:
    text, finish, usage = _generated(row)
    return {"id": f"cmpl-{digest}", "object": "text_completion", "created": unix(row.finished_at) or 0,
            "model": batch.model, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": None}  # fmt: skip


BODIES: dict[str, Callable[[BatchInfo, Any, str], dict[str, Any]]] = {
    "/v1/embeddings": _embeddings, "/v1/chat/completions": _chat, "/v1/completions": _completion,
}  # fmt: skip


def _line(batch: BatchInfo, row: Any) -> dict[str, Any]:
    digest = _digest(batch.id, row.item)
    line: dict[str, Any] = {"id": f"batch_req_{digest}", "custom_id": row.key, "response": None, "error": None}
    if row.status == "done":
        line["response"] = {"status_code": 200, "request_id": f"req_{digest}",
                            "body": BODIES[batch.endpoint](batch, row, digest)}  # fmt: skip
    elif row.status == "failed":
        error = {"message": row.error or "failed", "type": "server_error", "param": None, "code": None}
        line["response"] = {"status_code": 500, "request_id": f"req_{digest}", "body": {"error": error}}
    else:  # never ran: the batch was cancelled or expired first
        word = "expired" if batch.outcome == "expired" else "cancelled"
        line["error"] = {"code": f"batch_{word}", "message": f"the batch was {word} before this request ran"}
    return line


def statuses(batch: BatchInfo, kind: str) -> list[str]:
    """Which items a batch file holds: done ones (output), failed ones and, once the batch was
    cancelled or expired, the ones never run (error)."""
    if kind == "output":
        return ["done"]
    return ["failed", "pending"] if batch.outcome in ("cancelled", "expired") else ["failed"]


def render(ledger: Ledger, batch: BatchInfo, kind: str) -> Iterator[bytes]:
    """The ``kind`` ("output" or "error") file of a batch, as JSONL, a few lines per piece."""
    if batch.job_id is None:
        return
    wanted = statuses(batch, kind)
    with_input = batch.endpoint == "/v1/embeddings" and kind == "output"
    chunk: list[str] = []
    for row in ledger.output_rows(batch.job_id, wanted, with_input):
        chunk.append(json.dumps(_line(batch, row), ensure_ascii=False, separators=(",", ":")))
        if len(chunk) >= LINES_PER_WRITE:
            yield ("\n".join(chunk) + "\n").encode("utf-8")
            chunk.clear()
    if chunk:
        yield ("\n".join(chunk) + "\n").encode("utf-8")


def measure(ledger: Ledger, batch: BatchInfo, kind: str) -> tuple[int, int]:
    """(bytes, lines) of a batch file, rendered once without keeping it."""
    size = lines = 0
    for piece in render(ledger, batch, kind):
        size += len(piece)
        lines += piece.count(b"\n")
    return size, lines
