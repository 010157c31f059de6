"""zero-shot-classification: submit-time validation, batching, single-label and multi-label maths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producer.validate import check_item
from sluice.errors import ConfigError, ValidationError
from sluice.families.zero_shot_classification import ZeroShotClassification
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.common import build_text_classifier, mixed_texts
from tests.models.zero_shot_classification import NLI, TOPICS, build_nli_model
from tests.unit.test_oracles import run_engine

SPEC = ModelSpec(name="nli", task="zero-shot-classification", path="unused")
OK = {"text": "The match ended in a draw.", "candidate_labels": ["sport", "politics"]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"candidate_labels": ["a"]}, "item 3: missing required field 'text'"),
        ({"text": "t"}, "item 3: 'candidate_labels' must be a non-empty list of strings"),
        ({**OK, "candidate_labels": []}, "item 3: 'candidate_labels' must be a non-empty list of strings"),
        ({**OK, "candidate_labels": " , "}, "item 3: 'candidate_labels' must be a non-empty list of strings"),
        ({**OK, "candidate_labels": ["a", 2]}, "item 3: 'candidate_labels' must be a non-empty list of strings"),
        ({**OK, "hypothesis_template": "This example is about it."}, "item 3: field 'hypothesis_template' must"),
        ({**OK, "hypothesis_template": 5}, "item 3: field 'hypothesis_template' must be a string with {}"),
        ({**OK, "hypothesis_template": "{} and {x}"}, "item 3: field 'hypothesis_template' '{} and {x}' cannot be"),
        ({**OK, "hypothesis_template": "About {{}}."}, "item 3: field 'hypothesis_template' must"),  # no placeholder
        ({**OK, "hypothesis_template": "About {0}."}, "item 3: field 'hypothesis_template' 'About {0}.' cannot be"),
        ({**OK, "multi_label": "yes"}, "item 3: field 'multi_label' must be true or false"),
    ],
)
def test_validation_names_item_and_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ZeroShotClassification.validate_item(fields, 3, SPEC, Settings())


def test_labels_from_job_params_or_item() -> None:
    ZeroShotClassification.validate_item({**OK, "candidate_labels": "a, b", "multi_label": True}, 0, SPEC, Settings())
    ZeroShotClassification.validate_item({**OK, "hypothesis_template": "Topic: {}. {{braces}}"}, 0, SPEC, Settings())
    params = {"candidate_labels": "sport, politics", "hypothesis_template": "About {}."}
    assert check_item(ZeroShotClassification, SPEC, params, {"text": "t"}, 4, Settings(max_item_chars=10_000)) is None
    error = check_item(
        ZeroShotClassification, SPEC, {"hypothesis_template": "no slot"}, dict(OK), 5, Settings(max_item_chars=10_000)
    )
    assert error is not None and error.startswith("item 5: field 'hypothesis_template'")


@pytest.fixture(scope="module")
def nli(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = build_nli_model(tmp_path_factory.mktemp("nli") / "tiny-nli")
    return ModelSpec(name="tiny-nli", task="zero-shot-classification", path=str(path))


def _inputs(n: int) -> list[dict[str, Any]]:
    return [{"text": t} for t in mixed_texts(n, seed=4)]


def test_batched_equals_unbatched(nli: ModelSpec) -> None:
    inputs = _inputs(24)
    for i, x in enumerate(inputs):
        x["candidate_labels"] = TOPICS[: 1 + i % len(TOPICS)]
        x["multi_label"] = bool(i % 2)
    batched = run_engine(nli, inputs, {}, max_tokens=4096, max_size=64)
    alone = run_engine(nli, inputs, {}, max_tokens=1, max_size=1)
    for i in range(len(inputs)):
        a, b = batched[i], alone[i]
        assert a["error"] is None and a["label"] == b["label"] and a["output"]["labels"] == b["output"]["labels"]
        assert a["output"]["scores"] == pytest.approx(b["output"]["scores"], abs=1e-5)


def test_single_label_softmax_and_multi_label_independence(nli: ModelSpec) -> None:
    inputs = _inputs(12)
    single = run_engine(nli, inputs, {"candidate_labels": TOPICS})
    multi = run_engine(nli, inputs, {"candidate_labels": TOPICS, "multi_label": True})
    fewer = run_engine(nli, inputs, {"candidate_labels": TOPICS[:2], "multi_label": True})
    alone = run_engine(nli, inputs, {"candidate_labels": TOPICS[1:2]})
    for i in range(len(inputs)):
        assert sum(single[i]["output"]["scores"]) == pytest.approx(1.0, abs=1e-5)
        scores = dict(zip(multi[i]["output"]["labels"], multi[i]["output"]["scores"], strict=True))
        # multi_label: each label is entailment vs contradiction on its own, whatever the other labels.
        for label, score in zip(fewer[i]["output"]["labels"], fewer[i]["output"]["scores"], strict=True):
            assert score == pytest.approx(scores[label], abs=1e-5)
        # A single candidate label takes the multi-label path (a lone softmax would always give 1.0).
        assert alone[i]["score"] == pytest.approx(scores[TOPICS[1]], abs=1e-5)
        assert sorted(single[i]["output"]["labels"]) == sorted(TOPICS)


def test_registry_labels_name_the_nli_classes(tmp_path: Path) -> None:
    path = build_text_classifier(tmp_path / "generic", ("LABEL_0", "LABEL_1", "LABEL_2"), initializer_range=0.2)
    family = ZeroShotClassification(ModelSpec(name="g", task="zero-shot-classification", path=str(path)), "cpu")
    with pytest.raises(ConfigError, match=r"none of its labels .* starts with 'entail'"):
        family.setup()
    spec = ModelSpec(name="g", task="zero-shot-classification", path=str(path), labels=NLI)
    rows = run_engine(spec, _inputs(3), {"candidate_labels": TOPICS})
    assert all(r["error"] is None for r in rows.values())


def test_item_that_cannot_be_tokenised_fails_alone(nli: ModelSpec) -> None:
    # The hypothesis alone is longer than the model: only the premise may be cut, so the item fails.
    huge = " ".join(["label"] * 300)
    inputs = [{"text": "short text"}, {"text": "short text", "candidate_labels": ["a", huge]}]
    rows = run_engine(nli, inputs, {"candidate_labels": TOPICS})
    assert rows[0]["error"] is None
    assert rows[1]["error"] is not None and "tokenisation failed" in rows[1]["error"]
    assert np.isfinite(rows[0]["score"])
