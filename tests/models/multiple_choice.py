"""Oracle cases for ``multiple-choice``: a tiny BERT ``AutoModelForMultipleChoice``.

transformers has no multiple-choice pipeline, so the oracle is what its documentation does with
``AutoModelForMultipleChoice``: one item alone, its choices tokenised together (``[question] *
n`` paired with the choices, padded to the item's longest, truncated to the model's limit), the
model on shape ``(1, n, seq)``, softmax over the logits. Items have 2 to 16 choices, some no
question, one past the length limit, so batches mix choice counts and lengths.
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


def build_multiple_choice(path: Path, seed: int = 4) -> Path:
    import torch
    from transformers import BertForMultipleChoice

    torch.manual_seed(seed)
    model = BertForMultipleChoice(bert_config()).eval()
    # A wider head than the default init: choices' logits differ by more than noise.
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def _inputs() -> list[dict[str, Any]]:
    texts = [t[:200] for t in mixed_texts(120, seed=6)]
    rng = random.Random(6)
    items: list[dict[str, Any]] = []
    for i in range(24):
        n = [2, 16, 3, 5][i] if i < 4 else rng.randint(2, 8)
        item: dict[str, Any] = {"choices": [rng.choice(texts)[: rng.randint(3, 120)] for _ in range(n)]}
        if i % 5 != 3:  # every fifth item has no question: its choices are scored alone
            item["question"] = rng.choice(texts)
        items.append(item)
    items[0] = {"question": mixed_texts(2)[1][:3000], "choices": ["yes", "no"]}  # past the limit: truncated
    return items


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    tokenizer, model = load(path, "AutoModelForMultipleChoice")
    rows = []
    for x in inputs:
        choices = x["choices"]
        first = [x["question"]] * len(choices) if "question" in x else choices
        second = choices if "question" in x else None
        enc = tokenizer(first, second, truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits[0]
        scores = logits.softmax(-1).tolist()
        best = max(range(len(scores)), key=lambda i: scores[i])
        rows.append({"label": choices[best], "choice": best, "scores": scores})
    return rows


def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["output"]["choice"] == expected["choice"]
    assert actual["label"] == expected["label"]
    assert actual["score"] == pytest.approx(expected["scores"][expected["choice"]], abs=TOL)
    assert actual["output"]["scores"] == pytest.approx(expected["scores"], abs=TOL)


CASES = [OracleCase("tiny-multiple-choice", "multiple-choice", build_multiple_choice, _inputs, oracle_rows, check)]
