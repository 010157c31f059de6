"""Oracle cases for ``token-classification``: every aggregation strategy, stride windows, item-level params.

The oracle is ``pipeline("token-classification", stride=...)`` on the same texts. Sluice never
truncates, so the pipeline always gets the stride Sluice splits windows with; for strategy
``none`` the pipeline's strategy is left at its default (``none``), because it refuses an explicit
``"none"`` together with ``stride``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import bert_config, build_wordpiece, mixed_texts, save

TOL = 1e-4
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
#: the tiny model's max_length (128) // 4, Sluice's default stride
DEFAULT_STRIDE = 32

# Capitals, accents, an emoji the vocabulary lacks ([UNK]), punctuation glued to words, and hyphens.
SPECIAL_TEXTS = [
    "Guido van Rossum moved from Amsterdam to California; Tim Peters stayed in New-York.",
    "naïve café 🙂 Zürich—Genève, São Paulo!",
    "",
    "x",
]


def build_token_classifier(path: Path, labels: tuple[str, ...] = NER_LABELS, seed: int = 0) -> Path:
    """A 2-layer BERT token classifier with random (seeded) weights and a wide head, so entities appear."""
    import torch
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    config = bert_config(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    model = BertForTokenClassification(config).eval()
    # Default init (std 0.02) predicts "O" nearly everywhere with near-uniform scores; std 1 spreads
    # the labels so every strategy has B-/I- runs, subword disagreements and ignored tokens to handle.
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def pipeline_entities(
    path: Path, inputs: list[dict[str, Any]], params: dict[str, Any], stride: int = DEFAULT_STRIDE
) -> list[list[dict[str, Any]]]:
    from transformers import pipeline

    ner = pipeline("token-classification", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        fields = {**params, **x}
        kwargs: dict[str, Any] = {"stride": stride}
        strategy = fields.get("aggregation_strategy", "simple")
        if strategy != "none":
            kwargs["aggregation_strategy"] = strategy
        if "ignore_labels" in fields:
            kwargs["ignore_labels"] = fields["ignore_labels"]
        # One text per call: the oracle is the unbatched computation.
        rows.append(ner(fields["text"], **kwargs))
    return rows


def check(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    got = actual["output"]["entities"]
    assert len(got) == len(expected), (got, expected)
    for exp, ent in zip(expected, got, strict=True):
        key = "entity_group" if "entity_group" in exp else "entity"
        assert set(ent) == {key, "score", "word", "start", "end"}
        assert (ent[key], ent["word"], ent["start"], ent["end"]) == (exp[key], exp["word"], exp["start"], exp["end"])
        assert ent["score"] == pytest.approx(float(exp["score"]), abs=TOL)
    if not expected:
        assert (actual["label"], actual["score"]) == (None, None)
        return
    best = max(expected, key=lambda e: e["score"])
    key = "entity_group" if "entity_group" in best else "entity"
    assert actual["label"] == best[key]
    assert actual["score"] == pytest.approx(float(best["score"]), abs=TOL)


def _texts(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Mixed lengths: item 1 is far past max_length (dozens of windows), item 0 is one word."""
    return [{"text": t} for t in mixed_texts(n, seed)] + [{"text": t} for t in SPECIAL_TEXTS]


def _per_item(n: int) -> list[dict[str, Any]]:
    """Every strategy and several ignore_labels given per item, over long and short texts."""
    strategies = ("none", "simple", "first", "average", "max")
    ignores: tuple[list[str] | None, ...] = (None, [], ["O", "B-PER", "I-PER"])
    rows = []
    for i, x in enumerate(_texts(n, seed=5)):
        row = {**x, "aggregation_strategy": strategies[i % len(strategies)]}
        if ignores[i % len(ignores)] is not None:
            row["ignore_labels"] = ignores[i % len(ignores)]
        rows.append(row)
    return rows


def _case(model: str, inputs: Any, params: dict[str, Any] | None = None, stride: int | None = None) -> OracleCase:
    return OracleCase(
        model, "token-classification", build_token_classifier, inputs,
        partial(pipeline_entities, stride=stride or DEFAULT_STRIDE), check,
        params=params or {}, registry={"stride": stride} if stride else {},
    )  # fmt: skip


CASES = [
    _case("tiny-ner", lambda: _texts(60)),  # default strategy: simple
    *(_case(f"tiny-ner-{s}", lambda: _texts(16, seed=2), {"aggregation_strategy": s})
      for s in ("none", "first", "average", "max")),
    _case("tiny-ner-per-item", lambda: _per_item(30), stride=8),
]  # fmt: skip
