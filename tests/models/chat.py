"""Oracle case for ``text-generation`` on conversations (``messages``): a tiny Llama chat model.

Its tokenizer puts a bos token before every text it encodes, and its chat template writes the
bos token itself: tokenising the rendered chat with the tokenizer's defaults would start with two
bos tokens. The oracle runs each conversation alone through ``tokenizer.apply_chat_template(
messages, add_generation_prompt=True)`` (which checks there is exactly one) and greedy
``model.generate()``, text decoded without special tokens, mean log-probability as the score.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.models import OracleCase
from tests.models.common import mixed_texts
from tests.models.text_generation import build_llama, check, generate_alone, load


def _inputs() -> list[dict[str, Any]]:
    texts = mixed_texts(60, seed=11)
    rng = random.Random(11)
    items: list[dict[str, Any]] = []
    for i in range(16):
        turns = 1 + i % 3
        messages = [{"role": "system", "content": "Answer briefly."}] if i % 4 == 0 else []
        for t in range(turns):  # user, assistant, user, ...: short, so every chat fits the 128 positions
            messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": rng.choice(texts)[:40]})
        items.append({"messages": messages})
    items[1]["messages"][-1]["content"] = ""  # an empty message still renders its role
    return items


def chat_ids(path: Path, messages: list[dict[str, str]]) -> Any:
    """``apply_chat_template`` ids of one conversation, shape (1, n); asserts a single leading bos."""
    tokenizer, _ = load(path)
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    ids = enc["input_ids"]
    bos = tokenizer.bos_token_id
    assert ids[0, 0] == bos and int((ids[0] == bos).sum()) == 1, ids
    return ids


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    tokenizer, model = load(path)
    rows = []
    for x in inputs:
        ids = chat_ids(path, x["messages"])
        options = {**params, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        row = generate_alone(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, options, None)
        row["generated_text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
        rows.append(row)
    return rows


CASES = [
    OracleCase("tiny-llama-chat", "text-generation", lambda p: build_llama(p, seed=3), _inputs, oracle_rows, check,
               params={"max_new_tokens": 8}),
]  # fmt: skip
