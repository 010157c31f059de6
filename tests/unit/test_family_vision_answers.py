"""``object-detection``, ``image-to-text`` and ``visual-question-answering``: submit-time checks, routing a
checkpoint by its architecture, and items that fail alone (the oracle cases check the results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ConfigError, ValidationError
from sluice.families import family_for
from sluice.families.base import ItemResult
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.image_to_text import build_vit_gpt2
from tests.models.images import image_paths

DETECTION, CAPTIONS, VQA = "object-detection", "image-to-text", "visual-question-answering"


def checkpoint(tmp_path: Path, *architectures: str) -> ModelSpec:
    """A registry entry whose directory holds only a ``config.json`` naming ``architectures``: enough for
    submit-time routing, which reads nothing else."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": list(architectures)}), encoding="utf-8")
    return ModelSpec(name="m", task="", path=str(tmp_path))


def problem(task: str, spec: ModelSpec, fields: dict[str, Any], params: dict[str, Any] | None = None) -> str | None:
    """What submit time says of one item (job params checked first), or None."""
    family = family_for(task)
    try:
        family.validate_params(params or {}, spec)
    except ValidationError as exc:
        return str(exc)
    return check_item(family, spec, params or {}, fields, 0, Settings())


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_detection_threshold_is_a_number_in_0_1(tmp_path: Path, bad: Any) -> None:
    spec = checkpoint(tmp_path, "DetrForObjectDetection")
    image = {"image": image_paths()[0]}
    assert problem(DETECTION, spec, image) is None
    assert problem(DETECTION, spec, {**image, "threshold": 0}) is None
    assert "'threshold' must be a number in [0, 1]" in str(problem(DETECTION, spec, {**image, "threshold": bad}))
    assert "job params" in str(problem(DETECTION, spec, image, {"threshold": bad}))
    spec.options["threshold"] = bad  # a registry default is checked at submit too
    assert "registry model 'm'" in str(problem(DETECTION, spec, image))


def test_a_vqa_checkpoint_is_not_a_captioner(tmp_path: Path) -> None:
    spec = checkpoint(tmp_path, "BlipForQuestionAnswering")
    message = str(problem(CAPTIONS, spec, {"image": image_paths()[0]}))
    assert "visual question answering checkpoint (BlipForQuestionAnswering)" in message
    assert 'task = "visual-question-answering"' in message
    with pytest.raises(ConfigError, match="BlipForQuestionAnswering"):  # the worker refuses it before loading
        family_for(CAPTIONS)(spec, "cpu").setup()


@pytest.mark.parametrize("architecture", ["BlipForConditionalGeneration", "GitForCausalLM"])
def test_a_captioner_is_not_a_vqa_model(tmp_path: Path, architecture: str) -> None:
    spec = checkpoint(tmp_path, architecture)
    message = str(problem(VQA, spec, {"image": image_paths()[0], "question": "what?"}))
    assert f"architecture {architecture} is not a visual question answering model" in message
    assert 'task = "image-to-text"' in message


def test_vqa_fields_and_options(tmp_path: Path) -> None:
    vilt = checkpoint(tmp_path / "vilt", "ViltForQuestionAnswering")
    blip = checkpoint(tmp_path / "blip", "BlipForQuestionAnswering")
    item = {"image": image_paths()[0], "question": "what?"}
    assert problem(VQA, vilt, item, {"top_k": 2}) is None
    assert problem(VQA, blip, item, {"max_new_tokens": 5, "num_beams": 2}) is None
    assert problem(VQA, vilt, {"image": image_paths()[0]}) == "item 0: missing required field 'question'"
    assert "'top_k' must be an integer >= 1" in str(problem(VQA, vilt, {**item, "top_k": 0}))
    assert "only apply to generative models" in str(problem(VQA, vilt, item, {"num_beams": 2}))
    assert "only apply to generative models" in str(problem(VQA, vilt, {**item, "max_new_tokens": 4}))
    assert "unknown option(s) 'temperture'" in str(problem(VQA, blip, item, {"temperture": 0.5}))
    assert "'num_beams' must be in [1, 32]" in str(problem(VQA, blip, {**item, "num_beams": 0}))


def test_captioning_fields(tmp_path: Path) -> None:
    spec = checkpoint(tmp_path, "GitForCausalLM")
    image = {"image": image_paths()[0]}
    assert problem(CAPTIONS, spec, {**image, "text": "a photo of"}, {"max_new_tokens": 5}) is None
    assert "field 'text' must be a string" in str(problem(CAPTIONS, spec, {**image, "text": 3}))
    assert "missing required field 'image'" in str(problem(CAPTIONS, spec, {"text": "a photo of"}))
    assert "unknown option(s) 'question'" in str(problem(CAPTIONS, spec, image, {"question": "why?"}))


def test_a_prompt_or_a_missing_image_fails_its_item_alone(tmp_path: Path) -> None:
    """A vision-encoder-decoder captioner takes no prompt; an image gone since submit fails only its item."""
    spec = ModelSpec(name="ved", task=CAPTIONS, path=str(build_vit_gpt2(tmp_path / "ved")))
    family = family_for(CAPTIONS)(spec, "cpu")
    family.setup()
    good, prompted, gone = image_paths()[0], {"image": image_paths()[1], "text": "a photo of"}, {"image": "/nope.png"}
    out = family.preprocess_many([(0, {"image": good}), (1, prompted), (2, gone)])
    assert not isinstance(out[0], ItemResult) and out[0][0].ids["input_ids"] == []
    assert isinstance(out[1], ItemResult) and "captions without a prompt" in str(out[1].error)
    assert isinstance(out[2], ItemResult) and "'/nope.png' does not exist" in str(out[2].error)
