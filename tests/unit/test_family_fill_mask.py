"""``fill-mask``: submit-time checks (mask token, top_k, targets), several masks, truncation, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ConfigError, ValidationError
from sluice.families import family_for
from sluice.families.fill_mask import FillMask
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.fill_mask import MASK, build_masked_lm, check, pipeline_predictions
from tests.unit.test_oracles import run_engine

TASK = "fill-mask"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_masked_lm(tmp_path_factory.mktemp("models") / "tiny-mlm")


def make_spec(model_dir: Path | str = "/nowhere", **options: Any) -> ModelSpec:
    return ModelSpec(name="tiny-mlm", task=TASK, path=str(model_dir), options=options)


def problem(fields: Any, params: dict[str, Any] | None = None, spec: ModelSpec | None = None) -> str | None:
    # Submit time never loads the model: the spec points nowhere.
    return check_item(FillMask, spec or make_spec(), params or {}, fields, 4, Settings(max_item_chars=10_000))


def test_registered_under_its_task() -> None:
    assert family_for(TASK) is FillMask


# submit time -----------------------------------------------------------------------------------


def test_text_must_contain_the_registry_mask_token() -> None:
    assert problem({"text": f"a {MASK} b"}) is None
    message = problem({"text": "no mask here"})
    assert message is not None and message.startswith("item 4: field 'text' has no mask token '[MASK]'")
    roberta = make_spec(mask_token="<mask>")
    assert problem({"text": "a <mask> b"}, spec=roberta) is None
    message = problem({"text": f"a {MASK} b"}, spec=roberta)
    assert message is not None and message.startswith("item 4: field 'text' has no mask token '<mask>'")
    assert problem({"top_k": 3}) == "item 4: missing required field 'text'"


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", True])
def test_top_k_must_be_a_positive_integer(bad: Any) -> None:
    message = problem({"text": MASK, "top_k": bad})
    assert message is not None and message.startswith("item 4: field 'top_k' must be an integer >= 1")
    with pytest.raises(ValidationError, match="job params: field 'top_k'"):
        FillMask.validate_params({"top_k": bad}, make_spec())


@pytest.mark.parametrize("bad", [[], [""], ["ok", 3], {"a": 1}, 7])
def test_targets_must_be_a_list_of_strings(bad: Any) -> None:
    message = problem({"text": MASK, "targets": bad})
    assert message is not None and message.startswith("item 4: 'targets' must be a non-empty list")
    with pytest.raises(ValidationError, match="job params: 'targets'"):
        FillMask.validate_params({"targets": bad}, make_spec())


def test_valid_params_pass() -> None:
    assert problem({"text": MASK, "top_k": 1, "targets": "word"}) is None
    assert problem({"text": MASK}, {"top_k": 50, "targets": ["a", "b"]}) is None
    FillMask.validate_params({"top_k": 2, "targets": ["a"]}, make_spec())


# run time ------------------------------------------------------------------------------------


def test_setup_refuses_a_registry_mask_token_the_tokenizer_does_not_use(model_dir: Path) -> None:
    family = FillMask(make_spec(model_dir, mask_token="<mask>"), "cpu")
    with pytest.raises(ConfigError, match="tokenizer's mask token is '\\[MASK\\]' but the registry says '<mask>'"):
        family.setup()


def test_several_masks_give_one_ranking_per_mask(model_dir: Path) -> None:
    inputs = [{"text": f"Return the {MASK} of the {MASK}."}, {"text": f"Return the {MASK}."}]
    rows = run_engine(make_spec(model_dir), inputs, {"top_k": 3})
    several, single = rows[0], rows[1]
    predictions = several["output"]["predictions"]
    assert len(predictions) == 2 and all(len(r) == 3 for r in predictions)
    assert (several["label"], several["score"]) == (predictions[0][0]["token_str"], predictions[0][0]["score"])
    # Like the pipeline, each sequence keeps the special tokens so the other mask stays visible.
    assert all(p["sequence"].startswith("[CLS]") and MASK in p["sequence"] for r in predictions for p in r)
    assert len(single["output"]["predictions"]) == 3 and isinstance(single["output"]["predictions"][0], dict)
    for exp, row in zip(pipeline_predictions(model_dir, inputs, {"top_k": 3}), (several, single), strict=True):
        check(exp, row)


def test_top_k_may_reach_the_vocabulary_size_but_not_pass_it(model_dir: Path) -> None:
    rows = run_engine(make_spec(model_dir), [{"text": MASK, "top_k": 600}, {"text": MASK, "top_k": 601}], {})
    assert rows[0]["error"] is None
    scores = [p["score"] for p in rows[0]["output"]["predictions"]]
    assert len(scores) == 600 and sum(scores) == pytest.approx(1.0, abs=1e-4) and scores == sorted(scores)[::-1]
    assert rows[1]["error"] == "ItemError: 'top_k' is 601 but the model's vocabulary has only 600 tokens"


def test_items_fail_alone(model_dir: Path) -> None:
    long_text = " ".join(["word"] * 300)
    rows = run_engine(
        make_spec(model_dir),
        [
            {"text": f"{long_text} {MASK}"},  # the mask is cut off by truncation to 128 tokens
            {"text": f"a {MASK}", "targets": ["   "]},  # a target that tokenises to nothing
            {"text": f"a {MASK} b", "targets": ["   ", "the"]},
        ],
        {},
    )
    assert rows[0]["error"] == (
        "no [MASK] left in the text after truncation to 128 tokens; put the mask earlier or shorten the text"
    )
    assert rows[1]["error"] == "ItemError: none of the targets ['   '] maps to a token of this model's vocabulary"
    assert rows[2]["error"] is None and [p["token_str"] for p in rows[2]["output"]["predictions"]] == ["the"]
