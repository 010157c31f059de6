"""``image-text-to-text``: submit-time checks of conversations with images, items failing alone, batching images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.families import family_for
from sluice.families.image_text_to_text import merge_vision
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.image_text_to_text import build_llava, vlm_inputs
from tests.models.images import image_paths
from worker.engine import Engine

TASK = "image-text-to-text"


def _check(fields: dict[str, Any], path: str = "/nowhere", **settings: Any) -> str | None:
    spec = ModelSpec(name="vlm", task=TASK, path=path)
    return check_item(family_for(TASK), spec, {}, fields, 0, Settings(**settings))


def _chat(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def test_accepted_forms() -> None:
    image = image_paths()[0]
    assert _check(_chat({"type": "image", "image": image}, {"type": "text", "text": "what is it?"})) is None
    assert _check(_chat({"type": "image", "path": image})) is None
    assert _check({"messages": [{"role": "user", "content": "hello"}]}) is None
    assert _check({"image": image, "text": "what is it?"}) is None
    assert _check({"text": "no image at all"}) is None
    allowed = ["https://img.example.com/"]
    assert _check(_chat({"type": "image", "url": "https://img.example.com/a.png"}), image_url_prefixes=allowed) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"content": "x"}]}, "string 'role'"),
        ({"messages": [{"role": "user", "content": 3}]}, "content must be a string or a list"),
        (_chat({"type": "video", "video": "a.mp4"}), 'must be {"type": "text"'),
        (_chat("just a string"), "content[0] must be"),
        (_chat({"type": "text"}), "a text part needs a string 'text'"),
        (_chat({"type": "image"}), "exactly one of 'image', 'url' or 'path'"),
        (_chat({"type": "image", "image": "/a.png", "url": "https://x/a.png"}), "exactly one of"),
        (_chat({"type": "image", "image": "/no/such.png"}), "messages[0].content[0]: item 0: field 'image'"),
        (_chat({"type": "image", "url": "https://elsewhere.com/a.png"}), "not under an allowed prefix"),
        ({**_chat({"type": "text", "text": "x"}), "text": "y"}, "either 'messages' or 'image' and 'text'"),
        ({"image": "IMAGE"}, "missing required field 'text'"),
        ({"text": "x", "image": "/no/such.png"}, "does not exist"),
        ({"text": "x", "max_new_tokens": 0}, "'max_new_tokens' must be in [1, 2048]"),
        ({"text": "x", "do_sample": True, "num_beams": 2}, "beam-search sampling"),
        ({"text": "x", "stop": "."}, None),  # not an option here: ignored like any unknown item field
    ],
)
def test_submit_rejects(fields: dict[str, Any], message: str | None) -> None:
    fields = {k: image_paths()[0] if v == "IMAGE" else v for k, v in fields.items()}
    error = _check(fields)
    if message is None:
        assert error is None
    else:
        assert error is not None and message in error, error


def test_a_conversation_over_the_limit_is_refused() -> None:
    error = _check(_chat({"type": "text", "text": "x" * 50}, {"type": "text", "text": "y" * 60}), max_item_chars=100)
    assert error is not None and "'messages' take 215 characters as JSON, over the limit of 100" in error


def test_messages_need_a_chat_template(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    error = _check({"messages": [{"role": "user", "content": "hi"}]}, path=str(tmp_path))
    assert error is not None and "has no chat template" in error
    assert _check({"text": "<image> what is it?", "image": image_paths()[0]}, path=str(tmp_path)) is None


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_llava(tmp_path_factory.mktemp("models") / "tiny-llava")
    family = family_for(TASK)(ModelSpec(name="vlm", task=TASK, path=str(path)), "cpu")
    family.setup()
    return family


def test_a_prompt_over_the_limit_fails_alone(llava: Any) -> None:
    """A prompt that leaves no room for max_new_tokens fails (cutting it could cut an image); the rest answer."""
    family = llava
    inputs = vlm_inputs(3)
    inputs[1] = {**inputs[1], "max_new_tokens": 500}
    engine = Engine(family, max_batch_tokens=4096, max_batch_size=8)
    rows = {r.item: r for results, _ in engine.run(list(enumerate(inputs))) for r in results}
    assert rows[0].error is None and rows[2].error is None
    assert "over the model's 512-token limit" in str(rows[1].error)


def test_merge_vision_pads_per_item_tensors() -> None:
    """Per-image tensors concatenate; per-item ones (first dimension 1) with different image counts are zero-padded."""
    import torch

    llava = merge_vision([{"pixel_values": torch.ones(1, 3, 4, 4)}, {}, {"pixel_values": torch.ones(2, 3, 4, 4)}])
    assert llava["pixel_values"].shape == (3, 3, 4, 4)
    idefics = merge_vision([
        {"pixel_values": torch.ones(1, 2, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.bool)},
        {"pixel_values": torch.ones(1, 5, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 5, 4, 4, dtype=torch.bool)},
    ])  # fmt: skip
    assert idefics["pixel_values"].shape == (2, 5, 3, 4, 4)
    assert idefics["pixel_values"][0, 2:].abs().sum() == 0 and idefics["pixel_values"][1].min() == 1
    assert idefics["pixel_attention_mask"].dtype == torch.bool and int(idefics["pixel_attention_mask"][0].sum()) == 32


def test_per_token_inputs_are_padded_with_the_ids(llava: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A processor output with one value per token (Gemma 3's ``token_type_ids``) becomes a row padded like the
    ids; the others (pixels) go with the row as they are."""
    import torch

    def processed(item: int, fields: dict[str, Any]) -> dict[str, Any]:
        ones = torch.ones(1, 3 + item, dtype=torch.long)
        return {"input_ids": ones * 5, "attention_mask": ones, "token_type_ids": ones,
                "pixel_values": torch.zeros(1, 3, 32, 32)}  # fmt: skip

    monkeypatch.setattr(llava, "processed", processed)
    features = [f for entry in llava.preprocess_many([(0, {"text": "a"}), (1, {"text": "b"})]) for f in entry]
    assert [f.ids["token_type_ids"] for f in features] == [[1, 1, 1], [1, 1, 1, 1]]
    assert [sorted(f.meta["vision"]) for f in features] == [["pixel_values"], ["pixel_values"]]
    batch = llava.collate(features)
    assert batch["token_type_ids"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]  # left-padded, as the ids
    batch.pop("meta")  # as forward does before it picks rows
    assert llava.rows_of(batch, [0, 1])["pixel_values"].shape == (2, 3, 32, 32)
