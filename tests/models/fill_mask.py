"""Oracle cases for ``fill-mask``: default and job-level ``top_k``, ``targets``, several masks, long texts.

The oracle is ``pipeline("fill-mask", top_k=...)`` on the same texts, truncating as Sluice does
(``tokenizer_kwargs={"truncation": True}``; without it the pipeline fails on texts past the
model's 128 positions).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import bert_config, build_wordpiece, mixed_texts, save

TOL = 1e-4
MASK = "[MASK]"


def build_masked_lm(path: Path, seed: int = 0) -> Path:
    """A 2-layer BERT masked LM with random (seeded) weights and an untied, wider output layer."""
    import torch
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    model = BertForMaskedLM(bert_config(tie_word_embeddings=False)).eval()
    # Default init (std 0.02) gives near-uniform probabilities (~1/600 each) where the ranking is
    # noise and any score is within tolerance of any other; std 0.5 spreads them.
    torch.nn.init.normal_(model.cls.predictions.decoder.weight, std=0.5)
    return save(model, build_wordpiece(), path)


def masked(text: str, rng: random.Random, n: int = 1, within: int | None = None) -> str:
    """``text`` with ``n`` of its words (among the first ``within``) replaced by the mask token."""
    words = text.split() or ["empty"]
    span = min(len(words), within or len(words))
    for i in rng.sample(range(span), min(n, span)):
        words[i] = MASK
    return " ".join(words)


def _texts(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    texts = mixed_texts(n, seed)
    for i, text in enumerate(texts):
        # Masks among the first words, so they survive truncation at 128 tokens (item 1 is far past it).
        rows.append({"text": masked(text, rng, n=1 + (i % 7 == 3), within=20)})
    # Two masks, the second past the truncation point: only the first is predicted, as one mask.
    words = texts[1].split()
    rows.append({"text": " ".join([*words[:5], MASK, *words[5:300], MASK, *words[300:]])})
    rows.append({"text": f"{MASK}"})
    rows.append({"text": f"Return the {MASK} of the {MASK} as a {MASK}."})
    rows.append({"text": f"Naïve {MASK} 🙂 glued{MASK}words"})
    return rows


def _with_targets(n: int) -> list[dict[str, Any]]:
    """Item-level ``targets`` (in vocabulary, out of it, duplicated, fewer than top_k) and ``top_k``."""
    choices: list[list[str]] = [
        ["the", "a", "of", "value", "file"],
        ["return", "returned", "Returns"],  # out-of-vocabulary words map to their first sub-token
        ["the", "the", "object"],  # duplicates count once; top_k is capped at 2
        ["zzzzqqq", "list"],
        ["string"],
    ]
    rows = []
    for i, row in enumerate(_texts(n, seed=4)):
        rows.append({**row, "targets": choices[i % len(choices)], **({"top_k": 1 + i % 4} if i % 2 else {})})
    return rows


def pipeline_predictions(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        fields = {**params, **x}
        kwargs = {k: fields[k] for k in ("top_k", "targets") if k in fields}
        rows.append(fill(fields["text"], tokenizer_kwargs={"truncation": True}, **kwargs))
    return rows


def _check_ranking(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for exp, got in zip(expected, actual, strict=True):
        assert set(got) == {"score", "token", "token_str", "sequence"}
        assert (got["token"], got["token_str"], got["sequence"]) == (exp["token"], exp["token_str"], exp["sequence"])
        assert got["score"] == pytest.approx(exp["score"], abs=TOL)


def check(expected: list[Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    predictions = actual["output"]["predictions"]
    several = isinstance(expected[0], list)
    assert isinstance(predictions[0], list) == several
    rankings = list(zip(expected, predictions, strict=True)) if several else [(expected, predictions)]
    for exp, got in rankings:
        _check_ranking(exp, got)
    first = expected[0][0] if several else expected[0]
    assert actual["label"] == first["token_str"]
    assert actual["score"] == pytest.approx(first["score"], abs=TOL)


CASES = [
    OracleCase("tiny-mlm", "fill-mask", build_masked_lm, lambda: _texts(80), pipeline_predictions, check),
    OracleCase("tiny-mlm-top3", "fill-mask", build_masked_lm, lambda: _texts(30, seed=2), pipeline_predictions,
               check, params={"top_k": 3}),
    OracleCase("tiny-mlm-targets", "fill-mask", build_masked_lm, lambda: _with_targets(30), pipeline_predictions,
               check, params={"top_k": 2}),
]  # fmt: skip
