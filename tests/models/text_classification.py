"""Oracle cases for ``text-classification``: softmax, sigmoid (multi-label) and sentence pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import build_text_classifier, mixed_texts

TOL = 1e-4


def _pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(path), top_k=None, device="cpu")
    args = [{"text": x["text"], "text_pair": x["text_pair"]} if "text_pair" in x else x["text"] for x in inputs]
    # batch_size=1: the oracle is the unbatched computation, Sluice's batching must not change it.
    rows = [clf(a, truncation=True) for a in args]
    return [r[0] if r and isinstance(r[0], list) else r for r in rows]


def check(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] == expected[0]["label"]
    assert actual["score"] == pytest.approx(expected[0]["score"], abs=TOL)
    got = {s["label"]: s["score"] for s in actual["output"]["scores"]}
    for row in expected:
        assert got[row["label"]] == pytest.approx(row["score"], abs=TOL)


def _texts(n: int) -> list[dict[str, Any]]:
    return [{"text": t} for t in mixed_texts(n)]


def _pairs() -> list[dict[str, Any]]:
    texts = mixed_texts(60, seed=3)
    return [{"text": a, "text_pair": b} for a, b in zip(texts[::2], texts[1::2], strict=True)]


CASES = [
    OracleCase("tiny-clf", "text-classification", lambda p: build_text_classifier(p), lambda: _texts(300),
               _pipeline_rows, check),
    OracleCase("tiny-multilabel", "text-classification",
               lambda p: build_text_classifier(p, ("a", "b", "c", "d"), "multi_label_classification", seed=1),
               lambda: _texts(80), _pipeline_rows, check),
    OracleCase("tiny-pairs", "text-classification", lambda p: build_text_classifier(p, ("no", "yes"), seed=2),
               _pairs, _pipeline_rows, check),
]  # fmt: skip
