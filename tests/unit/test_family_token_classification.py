"""``token-classification``: submit-time checks, stride windows, the window merge and per-item params."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ConfigError, ValidationError
from sluice.families import family_for
from sluice.families.token_classification import (
    STRATEGIES,
    TokenClassification,
    aggregate_overlapping_entities,
    get_tag,
)
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.common import mixed_texts
from tests.models.token_classification import build_token_classifier, check, pipeline_entities
from tests.unit.test_oracles import run_engine

TASK = "token-classification"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_token_classifier(tmp_path_factory.mktemp("models") / "tiny-ner")


def make_spec(model_dir: Path, **options: Any) -> ModelSpec:
    return ModelSpec(name="tiny-ner", task=TASK, path=str(model_dir), options=options)


def loaded(spec: ModelSpec) -> TokenClassification:
    family = TokenClassification(spec, "cpu")
    family.setup()
    return family


def problem(fields: Any, params: dict[str, Any] | None = None, item: int = 3) -> str | None:
    spec = ModelSpec(name="ner", task=TASK, path="/nowhere")  # submit time never loads the model
    return check_item(TokenClassification, spec, params or {}, fields, item, Settings(max_item_chars=10_000))


def test_registered_under_its_task() -> None:
    assert family_for(TASK) is TokenClassification


# submit time -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [*STRATEGIES, "FIRST", "Average"])
def test_every_strategy_is_accepted_in_any_case(strategy: str) -> None:
    assert problem({"text": "x", "aggregation_strategy": strategy}) is None
    assert problem({"text": "x"}, {"aggregation_strategy": strategy}) is None


@pytest.mark.parametrize("bad", ["mean", "", 3, None, ["simple"]])
def test_unknown_strategy_names_the_item_and_the_choices(bad: Any) -> None:
    message = problem({"text": "x", "aggregation_strategy": bad})
    assert message is not None
    assert message.startswith("item 3: 'aggregation_strategy' must be one of none, simple, first, average, max")


def test_job_level_params_are_checked_before_any_item() -> None:
    spec = ModelSpec(name="ner", task=TASK, path="/nowhere")
    with pytest.raises(ValidationError, match="job params: 'aggregation_strategy'"):
        TokenClassification.validate_params({"aggregation_strategy": "longest"}, spec)
    with pytest.raises(ValidationError, match="job params: 'ignore_labels'"):
        TokenClassification.validate_params({"ignore_labels": "O"}, spec)
    TokenClassification.validate_params({"aggregation_strategy": "max", "ignore_labels": []}, spec)


@pytest.mark.parametrize("bad", ["O", ["O", 1], {"O": True}])
def test_ignore_labels_must_be_a_list_of_strings(bad: Any) -> None:
    message = problem({"text": "x", "ignore_labels": bad})
    assert message is not None and message.startswith("item 3: 'ignore_labels' must be a list")


def test_text_is_required() -> None:
    assert problem({"aggregation_strategy": "simple"}) == "item 3: missing required field 'text'"


# run time ------------------------------------------------------------------------------------


def test_stride_defaults_to_a_quarter_of_max_length_and_is_bounded(model_dir: Path) -> None:
    assert loaded(make_spec(model_dir)).stride == 128 // 4
    assert loaded(make_spec(model_dir, stride=0)).stride == 0
    for bad in (126, -1, 2.5, "8"):
        with pytest.raises(ConfigError, match="'stride' must be an integer from 0 to 125"):
            loaded(make_spec(model_dir, stride=bad))


def test_long_documents_are_split_into_overlapping_windows_not_truncated(model_dir: Path) -> None:
    family = loaded(make_spec(model_dir, stride=16))
    text = mixed_texts(2)[1]
    (features,) = family.preprocess_many([(0, {"text": text})])
    assert isinstance(features, list) and len(features) > 5
    assert all(f.length <= family.max_length for f in features)
    spans = [
        [o for o, special in zip(f.meta["offsets"], f.meta["special"], strict=True) if not special] for f in features
    ]
    # Each window starts 16 tokens before the previous one ends, and the last reaches the end of the text.
    for previous, window in itertools.pairwise(spans):
        assert window[:16] == previous[-16:]
    assert spans[-1][-1][1] == len(text.rstrip())
    # Windows from different items stay apart in one tokenizer call.
    many = family.preprocess_many([(5, {"text": "short"}), (6, {"text": text}), (7, {"text": "x"})])
    assert [len(x) for x in many] == [1, len(features), 1]  # type: ignore[arg-type]
    assert [f.item for f in many[1]] == [6] * len(features)  # type: ignore[union-attr]


def test_windows_merge_like_the_pipeline_and_batching_does_not_matter(model_dir: Path) -> None:
    spec = make_spec(model_dir, stride=8)
    inputs = [{"text": t} for t in mixed_texts(6, seed=9)]
    expected = pipeline_entities(model_dir, inputs, {"aggregation_strategy": "max"}, stride=8)
    for max_tokens, max_size in ((4096, 64), (1, 1)):
        rows = run_engine(spec, inputs, {"aggregation_strategy": "max"}, max_tokens=max_tokens, max_size=max_size)
        for i, exp in enumerate(expected):
            check(exp, rows[i])


def test_item_params_override_job_params(model_dir: Path) -> None:
    spec = make_spec(model_dir)
    text = mixed_texts(12, seed=11)[5]
    rows = run_engine(
        spec,
        [{"text": text}, {"text": text, "aggregation_strategy": "none"}, {"text": text, "ignore_labels": []}],
        # Grouped entities are filtered by group name, tokens of strategy "none" by their own label.
        {"aggregation_strategy": "first", "ignore_labels": ["O", "LOC", "B-LOC", "I-LOC"]},
    )
    first, none, everything = (rows[i]["output"]["entities"] for i in range(3))
    assert first and all(e["entity_group"] == "PER" for e in first)
    assert none and all(set(e) == {"entity", "score", "word", "start", "end"} for e in none)
    assert {e["entity"] for e in none} <= {"B-PER", "I-PER"}
    assert "O" in {e["entity_group"] for e in everything}


def test_no_entity_leaves_label_and_score_empty(model_dir: Path) -> None:
    ignore_all = ["O", "PER", "LOC"]
    rows = run_engine(make_spec(model_dir), [{"text": "Guido lives in Amsterdam."}, {"text": ""}],
                      {"ignore_labels": ignore_all})  # fmt: skip
    for row in rows.values():
        assert row["error"] is None
        assert (row["label"], row["score"], row["output"]) == (None, None, {"entities": []})


def test_label_and_score_are_the_best_entity(model_dir: Path) -> None:
    rows = run_engine(make_spec(model_dir), [{"text": mixed_texts(3)[2]}], {})
    entities = rows[0]["output"]["entities"]
    best = max(entities, key=lambda e: e["score"])
    assert (rows[0]["label"], rows[0]["score"]) == (best["entity_group"], best["score"])
    assert all(isinstance(e["score"], float) and isinstance(e["start"], int) for e in entities)


# the pipeline's pure helpers, ported -----------------------------------------------------------


def test_get_tag() -> None:
    assert get_tag("B-PER") == ("B", "PER")
    assert get_tag("I-LOC") == ("I", "LOC")
    assert get_tag("MISC") == ("I", "MISC")


def test_overlapping_entities_keep_the_longer_then_the_higher_score() -> None:
    def ent(start: int, end: int, score: float, name: str = "PER") -> dict[str, Any]:
        return {"entity_group": name, "start": start, "end": end, "score": score}

    entities = [ent(0, 5, 0.9), ent(0, 9, 0.5), ent(12, 15, 0.4), ent(12, 15, 0.6, "LOC"), ent(20, 22, 0.1)]
    assert aggregate_overlapping_entities(entities) == [ent(0, 9, 0.5), ent(12, 15, 0.6, "LOC"), ent(20, 22, 0.1)]
    assert aggregate_overlapping_entities([]) == []
