"""Oracle cases for ``next-sentence-prediction``: a tiny ``BertForNextSentencePrediction``.

transformers has no pipeline for it; the oracle is the model on one pair alone (``tokenizer(text,
text_pair, truncation=True)``), softmax over its two logits, index 0 meaning "is next" (BERT's
convention). Pairs are consecutive sentences of one document or sentences of two documents.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import bert_config, build_wordpiece, mixed_texts, save
from tests.models.text_generation import load

TOL = 1e-4


def build_nsp(path: Path, seed: int = 5) -> Path:
    import torch
    from transformers import BertForNextSentencePrediction

    torch.manual_seed(seed)
    model = BertForNextSentencePrediction(bert_config()).eval()
    # A wider head: P(is next) spread over (0, 1) rather than stuck near 0.5.
    torch.nn.init.normal_(model.cls.seq_relationship.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def _inputs() -> list[dict[str, Any]]:
    docs = mixed_texts(60, seed=8)
    rng = random.Random(8)
    pairs = []
    for i in range(30):
        doc = docs[i]
        half = max(1, len(doc) // 2)
        other = rng.choice(docs)
        pairs.append({"text": doc[:half], "text_pair": doc[half:] if i % 2 else other[: rng.randint(1, 300)]})
    pairs[1] = {"text": docs[1], "text_pair": docs[1][:4000]}  # both far past the limit: truncated longest-first
    return pairs


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[list[float]]:
    import torch

    tokenizer, model = load(path, "AutoModelForNextSentencePrediction")
    rows = []
    for x in inputs:
        enc = tokenizer(x["text"], x["text_pair"], truncation=True, return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**enc).logits[0].softmax(-1).tolist())
    return rows


def check(expected: list[float], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] == ("is_next" if expected[0] >= expected[1] else "not_next")
    assert actual["score"] == pytest.approx(expected[0], abs=TOL)  # P(is next), whichever label wins
    got = {s["label"]: s["score"] for s in actual["output"]["scores"]}
    assert got == pytest.approx({"is_next": expected[0], "not_next": expected[1]}, abs=TOL)


CASES = [OracleCase("tiny-nsp", "next-sentence-prediction", build_nsp, _inputs, oracle_rows, check)]
