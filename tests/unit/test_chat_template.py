"""Conversations (``messages``) for ``text-generation``: rendered with the chat template, one bos only.

The tiny Llama's tokenizer adds a bos token to every text and its chat template writes one too,
the case where tokenising the rendered chat with the tokenizer's defaults doubles the bos. The
engine-level oracle for conversations is ``tests/models/chat.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluice.errors import ValidationError
from sluice.families.text_generation import TextGeneration
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.chat import CASES as CHAT
from tests.models.text_generation import CASES as GENERATION

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does a queue do?"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CHAT[0].build(tmp_path_factory.mktemp("chat") / CHAT[0].model)


def spec_for(path: Path, name: str = "chat") -> ModelSpec:
    return ModelSpec(name, "text-generation", str(path))


def test_chat_ids_are_apply_chat_template_with_a_single_bos(chat_dir: Path) -> None:
    family = TextGeneration(spec_for(chat_dir), "cpu")
    family.setup()
    tokenizer: Any = family.tokenizer
    bos = tokenizer.bos_token_id
    (feature,) = family.preprocess(0, {"messages": MESSAGES, "max_new_tokens": 4})
    ids = feature.ids["input_ids"]
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    assert ids == expected
    assert ids[0] == bos and ids.count(bos) == 1
    # The trap this avoids: the template writes bos, and the tokenizer's defaults add another.
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(tokenizer.bos_token) and tokenizer(rendered)["input_ids"][:2] == [bos, bos]
    # The generation prompt is there: the model answers as the assistant.
    assert rendered.endswith("<|assistant|>\n")


def test_a_model_without_chat_template_refuses_messages_at_submit(tmp_path: Path) -> None:
    gpt2 = next(c for c in GENERATION if c.model == "tiny-gpt2")
    path = gpt2.build(tmp_path / gpt2.model)
    with pytest.raises(ValidationError, match=r"item 3: model 'plain' has no chat template.*send a 'text' prompt"):
        TextGeneration.validate_item({"messages": MESSAGES}, 3, spec_for(path, "plain"), Settings())


def test_messages_are_checked_at_submit(chat_dir: Path) -> None:
    spec = spec_for(chat_dir)
    TextGeneration.validate_item({"messages": MESSAGES}, 0, spec, Settings())
    bad: list[tuple[dict[str, Any], str]] = [
        ({"messages": MESSAGES, "text": "hi"}, "either 'text' or 'messages'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]\.content must be a string"),
        ({"messages": [{"content": "hi"}]}, r"messages\[0\] must be an object with a string 'role'"),
    ]
    for fields, message in bad:
        with pytest.raises(ValidationError, match=message):
            TextGeneration.validate_item(fields, 0, spec, Settings())
