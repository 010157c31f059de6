"""``zero-shot-image-classification``: submit-time checks, the text-embedding cache, and the whole-model path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ValidationError
from sluice.families import family_for
from sluice.families.zero_shot_image_classification import ZeroShotImageClassification
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.images import check_ranked, image_inputs, image_paths
from tests.models.zero_shot_image_classification import build_clip, build_clip_tokenizer, pipeline_rows
from worker.engine import Engine

TASK = "zero-shot-image-classification"
LABELS = ["cat", "dog", "car"]
GOOD = object()  # stands for a valid test image path in parameters (images are made on first use)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP: sigmoid scores, a logit bias, hypotheses padded to 64 tokens, so no split towers."""
    import torch
    from transformers import CLIPProcessor, SiglipConfig, SiglipImageProcessorPil, SiglipModel

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=dict(tower, image_size=32, patch_size=8))).eval()
    torch.nn.init.constant_(model.logit_scale, 4.0)  # spread the sigmoid scores apart
    path = tmp_path_factory.mktemp("models") / "tiny-siglip"
    model.save_pretrained(path)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _family(path: Path) -> Any:
    family = family_for(TASK)(ModelSpec(name=path.name, task=TASK, path=str(path)), "cpu")
    family.setup()
    return family


def _run(family: Any, inputs: list[dict[str, Any]], params: dict[str, Any], batch: int = 8) -> dict[int, Any]:
    engine = Engine(family, max_batch_tokens=10_000, max_batch_size=batch)
    items = [(i, {**params, **x}) for i, x in enumerate(inputs)]
    return {r.item: {"label": r.label, "score": r.score, "output": r.output, "error": r.error}
            for results, _ in engine.run(items) for r in results}  # fmt: skip


def test_family_is_discovered() -> None:
    assert family_for(TASK) is ZeroShotImageClassification


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"candidate_labels": LABELS}, "missing required field 'image'"),
        ({"image": "/nonexistent.png", "candidate_labels": LABELS}, "'image': '/nonexistent.png' does not exist"),
        ({"image": GOOD}, "'candidate_labels' must be a non-empty list of strings"),
        ({"image": GOOD, "candidate_labels": []}, "'candidate_labels' must be a non-empty list of strings"),
        ({"image": GOOD, "candidate_labels": ["a", "a"]}, "'candidate_labels' has duplicates"),
        ({"image": GOOD, "candidate_labels": LABELS, "hypothesis_template": 5}, "'hypothesis_template' must be"),
        ({"image": GOOD, "candidate_labels": LABELS, "hypothesis_template": "a {label}"}, "'hypothesis_template'"),
        ({"image": GOOD, "candidate_labels": LABELS, "hypothesis_template": "a photo"}, "no placeholder"),
    ],
)
def test_submit_rejects_bad_items_naming_item_and_field(fields: dict[str, Any], expected: str) -> None:
    fields = {k: image_paths()[0] if v is GOOD else v for k, v in fields.items()}
    spec = ModelSpec(name="m", task=TASK, path="unused")
    error = check_item(ZeroShotImageClassification, spec, {}, fields, 4, Settings(max_item_chars=1000))
    assert error is not None and error.startswith("item 4: ") and expected in error


def test_job_params_are_checked_once() -> None:
    spec = ModelSpec(name="m", task=TASK, path="unused")
    ZeroShotImageClassification.validate_params({"hypothesis_template": "a {} photo"}, spec)
    with pytest.raises(ValidationError, match="job params: field 'hypothesis_template'"):
        ZeroShotImageClassification.validate_params({"hypothesis_template": "{0} and {1}"}, spec)


def test_one_text_forward_per_distinct_label_set(clip_dir: Path) -> None:
    family = _family(clip_dir)
    assert family.split_towers
    calls: list[int] = []
    text_features = family.model.get_text_features

    def counted(**kwargs: Any) -> Any:
        calls.append(len(kwargs["input_ids"]))
        return text_features(**kwargs)

    family.model.get_text_features = counted
    inputs = [{**x, "candidate_labels": LABELS if i % 2 else ["x", "y"]} for i, x in enumerate(image_inputs())]
    rows = _run(family, inputs, {}, batch=4)
    _run(family, inputs[:6], {}, batch=4)  # a later chunk with the same label sets: no text forward at all
    _run(family, inputs[:2], {"hypothesis_template": "a {}"}, batch=4)  # a new template makes new sets
    assert sorted(calls) == [2, 2, 3, 3]  # rows per forward: (x, y) and (cat, dog, car), per template
    expected = pipeline_rows(clip_dir, inputs, {})
    for i, exp in enumerate(expected):
        check_ranked(exp, rows[i])


def test_whole_model_path_matches_the_pipeline(clip_dir: Path) -> None:
    family = _family(clip_dir)
    family.split_towers = False  # what a model without separate towers gets
    inputs = [{**x, "candidate_labels": LABELS if i % 3 else ["sun", "moon"]} for i, x in enumerate(image_inputs())]
    rows = _run(family, inputs, {"hypothesis_template": "an image of {}"})
    for i, exp in enumerate(pipeline_rows(clip_dir, inputs, {"hypothesis_template": "an image of {}"})):
        check_ranked(exp, rows[i])


def test_siglip_runs_whole_with_sigmoid_scores_like_the_pipeline(siglip_dir: Path) -> None:
    family = _family(siglip_dir)
    assert not family.split_towers
    inputs = image_inputs()[:12]
    rows = _run(family, inputs, {"candidate_labels": LABELS}, batch=5)
    expected = pipeline_rows(siglip_dir, inputs, {"candidate_labels": LABELS})
    for i, exp in enumerate(expected):
        check_ranked(exp, rows[i])
        assert sum(s["score"] for s in rows[i]["output"]["scores"]) != pytest.approx(1.0)  # sigmoid, not softmax


def test_unreadable_image_fails_alone(clip_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = [image_inputs()[0], {"image": str(broken)}, image_inputs()[1]]
    rows = _run(_family(clip_dir), inputs, {"candidate_labels": LABELS})
    assert rows[1]["error"].startswith("item 1: field 'image': cannot read image")
    expected = pipeline_rows(clip_dir, [inputs[0], inputs[2]], {"candidate_labels": LABELS})
    for i, exp in zip((0, 2), expected, strict=True):
        check_ranked(exp, rows[i])
