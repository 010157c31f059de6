"""What the HTTP API adds below it: ``texts`` items (feature extraction), ``messages`` and ``stop``
(text generation), and OpenAI batch lines turned into items. In process, tiny models only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sluice.api import batch_input as bi
from sluice.errors import ValidationError
from sluice.families import family_for
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.text_generation import build_gpt2, build_llama
from worker.engine import Engine

SETTINGS = Settings(max_item_chars=100, api_default_max_tokens=7)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def spec(path: Path, task: str = "text-generation") -> ModelSpec:
    return ModelSpec(name="tiny", task=task, path=str(path))


@pytest.mark.parametrize(("fields", "problem"), [
    ({"texts": []}, "list of 1 to"), ({"texts": ["ok", 3]}, "'texts'[1] must be a string"),
    ({"texts": ["x" * 101]}, "over the limit of 100"), ({"texts": ["a"], "text": "b"}, "either 'text' or 'texts'"),
])  # fmt: skip
def test_texts_items_are_checked_at_submit(fields: dict[str, Any], problem: str) -> None:
    family = family_for("feature-extraction")
    with pytest.raises(ValidationError, match=re.escape(problem)):
        family.validate_item(fields, 4, ModelSpec(name="e", task="feature-extraction", path="x"), SETTINGS)


def test_messages_need_a_chat_template(gpt2: Path, llama: Path) -> None:
    family = family_for("text-generation")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    family.validate_item(chat, 0, spec(llama), SETTINGS)
    with pytest.raises(ValidationError, match="no chat template"):
        family.validate_item(chat, 0, spec(gpt2), SETTINGS)
    with pytest.raises(ValidationError, match=re.escape("messages[0].content must be a string")):
        family.validate_item({"messages": [{"role": "user", "content": 1}]}, 0, spec(llama), SETTINGS)


def run(path: Path, items: list[tuple[int, dict[str, Any]]]) -> dict[int, Any]:
    family = family_for("text-generation")(spec(path), "cpu")
    family.setup()
    return {r.item: r for results, _ in Engine(family, 4096, 8).run(items) for r in results}


def test_a_stop_sequence_cuts_the_text_before_it(gpt2: Path) -> None:
    free = run(gpt2, [(0, {"text": "import os", "max_new_tokens": 12})])[0].output
    text = free["generated_text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = run(gpt2, [(0, {"text": "import os", "max_new_tokens": 12, "stop": [stop, "\x00never"]})])[0]
    assert stopped.output["generated_text"] == text[: text.find(stop)]
    assert stopped.output["finish_reason"] == "stop" and stopped.output["n_new_tokens"] <= free["n_new_tokens"]


def test_a_conversation_is_rendered_by_the_chat_template_without_a_second_bos(llama: Path) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "hello there"}]
    result = run(llama, [(0, {"messages": messages, "max_new_tokens": 3})])[0]
    tokenizer = AutoTokenizer.from_pretrained(llama)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert result.error is None and result.n_tokens == len(prompt) + result.output["n_new_tokens"]
    assert prompt.count(tokenizer.bos_token_id) == 1


def line(url: str, body: dict[str, Any], custom_id: str = "a") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def test_batch_lines_become_items() -> None:
    emb = bi.parse(1, line("/v1/embeddings", {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
                   "/v1/embeddings", SETTINGS)  # fmt: skip
    assert (emb.custom_id, emb.model, emb.record) == ("a", "m", {"texts": ["a", "b"], "encoding_format": "base64"})
    chat = bi.parse(2, line("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "q"}],
                                                     "temperature": 0, "stop": "x", "seed": 3}),
                    "/v1/chat/completions", SETTINGS).record  # fmt: skip
    assert chat == {"messages": [{"role": "user", "content": "q"}], "max_new_tokens": 7, "do_sample": False,
                    "top_k": 0, "stop": "x", "seed": 3}  # fmt: skip
    text = bi.parse(3, line("/v1/completions", {"model": "m", "prompt": ["p"], "temperature": 0.5, "max_tokens": 2}),
                    "/v1/completions", SETTINGS).record  # fmt: skip
    assert text == {"text": "p", "max_new_tokens": 2, "do_sample": True, "top_k": 0, "temperature": 0.5}


@pytest.mark.parametrize(("raw", "code"), [
    (b"[1]", "invalid_json"), (line("/v1/embeddings", {"model": "m", "input": "x"}, custom_id=""), "invalid_custom_id"),
    (line("/v1/completions", {"model": "m", "prompt": "x"}), "invalid_url"),
    (line("/v1/embeddings", {"input": "x"}), "missing_required_parameter"),
    (line("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 8}), "unsupported_parameter"),
    (line("/v1/embeddings", {"model": "m", "input": [[1, 2]]}), "invalid_value"),
])  # fmt: skip
def test_bad_batch_lines_say_why(raw: bytes, code: str) -> None:
    with pytest.raises(bi.LineProblem) as caught:
        bi.parse(1, raw, "/v1/embeddings", SETTINGS)
    assert caught.value.code == code


def test_lines_are_split_across_pieces_and_numbered() -> None:
    pieces = [b'{"a"', b': 1}\n\n{"b": 2}\n{"c"', b": 3}"]
    assert list(bi.lines(pieces, 100)) == [(1, b'{"a": 1}'), (3, b'{"b": 2}'), (4, b'{"c": 3}')]
    with pytest.raises(bi.LineProblem, match="line 1 is over 4 bytes"):
        list(bi.lines([b"0123456789"], 4))
