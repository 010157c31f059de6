"""Oracle cases for ``zero-shot-classification``: ``pipeline("zero-shot-classification")`` on tiny NLI models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import build_text_classifier, mixed_texts

TOL = 1e-4
NLI = ("contradiction", "neutral", "entailment")  # the MNLI order (roberta-large-mnli, bart-large-mnli)
NLI_ENTAILMENT_FIRST = ("entailment", "neutral", "contradiction")  # the other common order (DeBERTa NLI)
TOPICS = ["politics", "sport", "files and paths", "network", "numbers"]


def build_nli_model(path: Path, labels: tuple[str, ...] = NLI, seed: int = 10) -> Path:
    """A tiny BERT with NLI labels. With the default init (std 0.02) the entailment logit hardly
    depends on the hypothesis (label scores differ by 1e-5, order decided by float noise); a wider
    init makes the ranking of candidate labels a meaningful check."""
    return build_text_classifier(path, labels, seed=seed, initializer_range=0.2)


def _pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    zsc = pipeline("zero-shot-classification", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        fields = {**params, **x}
        options = {k: fields[k] for k in ("hypothesis_template", "multi_label") if k in fields}
        rows.append(zsc(fields["text"], candidate_labels=fields["candidate_labels"], **options))
    return rows


def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["output"]["labels"] == expected["labels"]
    assert actual["output"]["scores"] == pytest.approx(expected["scores"], abs=TOL)
    assert actual["label"] == expected["labels"][0]
    assert actual["score"] == pytest.approx(expected["scores"][0], abs=TOL)


def _texts(n: int, seed: int = 1) -> list[dict[str, Any]]:
    return [{"text": t} for t in mixed_texts(n, seed=seed)]


def _per_item_labels() -> list[dict[str, Any]]:
    """Job-level labels as a comma string, some items with their own list (one with a single label)."""
    rows = _texts(60, seed=7)
    for i in range(0, len(rows), 3):
        rows[i]["candidate_labels"] = TOPICS[: 1 + i % len(TOPICS)]
    return rows


CASES = [
    OracleCase("tiny-nli", "zero-shot-classification", lambda p: build_nli_model(p), lambda: _texts(80),
               _pipeline_rows, check, params={"candidate_labels": TOPICS}),
    OracleCase("tiny-nli-multi", "zero-shot-classification",
               lambda p: build_nli_model(p, NLI_ENTAILMENT_FIRST, seed=19), _per_item_labels, _pipeline_rows, check,
               params={"candidate_labels": "urgent, not urgent, phone", "multi_label": True,
                       "hypothesis_template": "The topic of this text is {}."}),
    OracleCase("tiny-nli-template", "zero-shot-classification", lambda p: build_nli_model(p, seed=12),
               _per_item_labels, _pipeline_rows, check,
               params={"candidate_labels": "urgent, not urgent, phone", "hypothesis_template": "Es geht um {}."}),
]  # fmt: skip
