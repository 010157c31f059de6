"""End-to-end jobs through the real stack: client and CLI, ordering, counts, bad input."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from producer.client import Client
from sluice.db import Chunk, Item
from sluice.errors import UnknownModelError, ValidationError
from sluice.status import ItemStatus, JobStatus
from tests.integration.conftest import Stack, sluice
from tests.models.common import mixed_texts


@cache
def minilm_reference(texts: tuple[str, ...]) -> np.ndarray:
    """sentence-transformers' own embeddings of ``texts``, one at a time; once per session (both backends)."""
    from sentence_transformers import SentenceTransformer

    from sluice.registry import load_registry

    model = SentenceTransformer(load_registry(None).get("minilm").path, device="cpu")
    return np.asarray(model.encode(list(texts), batch_size=1, normalize_embeddings=False))


def test_bulk_job_completes_in_input_order(stack: Stack) -> None:
    texts = mixed_texts(300)
    job = stack.client.submit("tiny-clf", texts)
    info = stack.client.wait(job, timeout=300)
    assert info.status is JobStatus.COMPLETED
    assert (info.total, info.done, info.failed) == (300, 300, 0)
    assert stack.client.item_counts(job) == {ItemStatus.DONE.value: 300}
    rows = list(stack.client.results(job))
    assert [r["item"] for r in rows] == list(range(300))
    assert all(r["label"] in {"negative", "neutral", "positive"} and 0 < r["score"] <= 1 for r in rows)


def test_minilm_matches_sentence_transformers(stack: Stack) -> None:
    texts = mixed_texts(200, seed=7)
    job = stack.client.submit("minilm", texts)
    stack.client.wait(job, timeout=300)
    got = np.array([r["embedding"] for r in stack.client.results(job)], dtype=np.float32)
    want = minilm_reference(tuple(texts))
    assert got.shape == want.shape == (200, 384)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_single_document_jobs_share_forward_passes_exactly_once(stack: Stack) -> None:
    """Cross-job coalescing: one-document jobs, all queued before their messages go out, run
    in shared batches; each chunk is claimed once (the later messages find it done)."""
    texts = mixed_texts(40, seed=3)
    held = Client(stack.settings)
    sends: list[tuple[str, list[int], int, str | None]] = []
    held.dispatcher.send = lambda job_id, chunks, priority, model: sends.append((job_id, chunks, priority, model))  # type: ignore[method-assign,assignment,misc,func-returns-value]
    jobs = [held.submit("minilm", [t]) for t in texts]
    for send in sends:
        stack.client.enqueue(*send)
    assert all(stack.client.wait(j, timeout=300).status is JobStatus.COMPLETED for j in jobs)
    with stack.client.engine.connect() as conn:
        items = conn.execute(select(Item.job_id, Item.finished_at, Item.embedding).where(Item.job_id.in_(jobs))).all()
        deliveries = conn.execute(select(Chunk.deliveries).where(Chunk.job_id.in_(jobs))).scalars().all()
    assert len(items) == 40 and deliveries == [1] * 40
    # A batch's results are committed together, so distinct commit times count the batches.
    assert len({row.finished_at for row in items}) <= 10
    got = {row.job_id: np.frombuffer(row.embedding, dtype="<f4") for row in items}
    want = minilm_reference(tuple(texts))
    np.testing.assert_allclose(np.stack([got[j] for j in jobs]), want, atol=1e-4)


def test_topics_scores_are_softmaxed_similarities(stack: Stack) -> None:
    labels = ["networking", "file systems", "mathematics"]
    texts = ["Open a TCP socket and send bytes.", "Return the square root of x.", "List files in a directory."]
    job = stack.client.submit("minilm-topics", texts, params={"candidate_labels": labels})
    stack.client.wait(job, timeout=300)
    rows = list(stack.client.results(job))
    assert [r["label"] for r in rows] == ["networking", "mathematics", "file systems"]
    for row in rows:
        scores = [s["score"] for s in row["output"]["scores"]]
        assert sum(scores) == pytest.approx(1.0, abs=1e-5) and scores == sorted(scores, reverse=True)
        assert row["score"] == scores[0]


def test_item_params_override_job_params(stack: Stack) -> None:
    items = [{"text": "Return the square root of x."},
             {"text": "Return the square root of x.", "candidate_labels": ["cooking", "gardening"]}]  # fmt: skip
    job = stack.client.submit("minilm-topics", items, params={"candidate_labels": ["maths", "music"]})
    stack.client.wait(job, timeout=300)
    rows = list(stack.client.results(job))
    assert rows[0]["label"] in {"maths", "music"} and rows[1]["label"] in {"cooking", "gardening"}


def test_cli_submit_status_results(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in mixed_texts(50, seed=2)), encoding="utf-8")
    out = sluice(stack, "submit", str(src), "--model", "tiny-clf", "--priority", "5", "--wait")
    job = out.stdout.strip()
    assert "completed" in out.stderr
    status = sluice(stack, "status", job).stdout
    assert "done=50 failed=0" in status
    sluice(stack, "results", job, "--format", "csv", "-o", str(tmp_path / "r.csv"))
    with (tmp_path / "r.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["item"]) for r in rows] == list(range(50))
    jsonl = sluice(stack, "results", job).stdout.splitlines()
    assert json.loads(jsonl[0])["label"] == rows[0]["label"]
    assert "minilm" in sluice(stack, "models").stdout


def test_cli_param_and_txt_input(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "docs.txt"
    src.write_text("Open a socket.\n\nSort a list of numbers.\n", encoding="utf-8")
    out = sluice(stack, "submit", str(src), "--model", "minilm-topics",
                 "--param", 'candidate_labels=["networking","algorithms"]', "--wait")  # fmt: skip
    rows = [json.loads(line) for line in sluice(stack, "results", out.stdout.strip()).stdout.splitlines()]
    assert [r["label"] for r in rows] == ["networking", "algorithms"]


# bad input ---------------------------------------------------------------------------------


def test_unknown_model_is_rejected_before_anything_is_written(stack: Stack) -> None:
    before = len(stack.client.jobs(limit=1000))
    with pytest.raises(UnknownModelError, match=r"not registered .*minilm"):
        stack.client.submit("no-such-model", ["text"])
    assert len(stack.client.jobs(limit=1000)) == before


def test_cli_reports_bad_input_clearly(stack: Stack, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    res = sluice(stack, "submit", str(empty), "--model", "tiny-clf", check=False)
    assert res.returncode == 2 and "input is empty" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"txt": "typo"}\n' + b'{"text": "caf\xe9"}\n')
    res = sluice(stack, "submit", str(bad), "--model", "tiny-clf", check=False)
    assert res.returncode == 2
    assert "item 1: missing required field 'text'" in res.stderr
    assert "bad.jsonl line 3: not valid UTF-8 (byte 0xe9" in res.stderr
    res = sluice(stack, "submit", str(tmp_path / "nope.txt"), "--model", "tiny-clf", check=False)
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_skip_invalid_keeps_every_position(stack: Stack) -> None:
    items = [{"text": "good one"}, {"txt": "typo"}, "a plain string", {"text": 5}]
    job = stack.client.submit("tiny-clf", items, skip_invalid=True)
    info = stack.client.wait(job, timeout=300)
    assert (info.status, info.done, info.failed) == (JobStatus.COMPLETED, 2, 2)
    rows = list(stack.client.results(job))
    assert [r["status"] for r in rows] == ["done", "failed", "done", "failed"]
    assert "missing required field 'text'" in rows[1]["error"]
    assert "must be a string" in rows[3]["error"]


def test_megabyte_document_is_truncated_not_crashed(stack: Stack) -> None:
    huge = ("All work and no play makes a very long document. " * 21000)[:1_000_000]
    job = stack.client.submit("tiny-clf", ["short one", huge, "another short one"])
    info = stack.client.wait(job, timeout=300)
    assert (info.done, info.failed) == (3, 0)
    assert len(next(iter(stack.client.results(job, include_input=True)))["input"]["text"]) == 9


def test_oversize_document_is_rejected_with_the_limit(stack: Stack) -> None:
    with pytest.raises(ValidationError, match=r"over the limit of 2,000,000.*SLUICE_MAX_ITEM_CHARS"):
        stack.client.submit("tiny-clf", ["x" * 2_000_001])
