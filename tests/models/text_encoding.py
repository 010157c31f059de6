"""Oracle case for ``feature-extraction`` on an encoder-decoder checkpoint: a tiny T5.

A T5 checkpoint's ``AutoModel`` is the whole encoder-decoder (it wants decoder inputs), and
``pipeline("feature-extraction", model=<dir>)`` loads exactly that, so it cannot embed; Sluice
loads the encoder alone (``AutoModelForTextEncoding``: ``T5EncoderModel``). The oracle is
``pipeline("feature-extraction")`` given that encoder, one text alone, truncated to the limit,
its token states mean-pooled and L2-normalised by hand, as the registry entry asks.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tests.models import OracleCase
from tests.models.common import build_wordpiece, mixed_texts, save

TOL = 1e-4


def build_t5_checkpoint(path: Path, seed: int = 7) -> Path:
    """A whole T5 (``T5ForConditionalGeneration``, as t5-small is saved) with a T5-style tokenizer:
    no token type ids."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=600, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0,
                      eos_token_id=3, decoder_start_token_id=0, initializer_factor=2.0)  # fmt: skip
    tokenizer = build_wordpiece()
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return save(T5ForConditionalGeneration(config).eval(), tokenizer, path)


@cache
def _extractor(path: Path) -> Any:
    from transformers import AutoTokenizer, T5EncoderModel, pipeline

    encoder = T5EncoderModel.from_pretrained(path).eval()
    return pipeline("feature-extraction", model=encoder, tokenizer=AutoTokenizer.from_pretrained(path), device="cpu")


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[np.ndarray]:
    extract = _extractor(path)
    rows = []
    for x in inputs:
        states = np.asarray(extract(x["text"], truncation=True)[0], dtype=np.float64)  # (tokens, dim)
        pooled = states.mean(axis=0)
        rows.append(pooled / np.linalg.norm(pooled))
    return rows


def check(expected: np.ndarray, actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    got = np.asarray(actual["embedding"], dtype=np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOL


def _inputs() -> list[dict[str, Any]]:
    return [{"text": t} for t in mixed_texts(40, seed=9)]


CASES = [
    OracleCase("tiny-t5-encoder", "feature-extraction", build_t5_checkpoint, _inputs, oracle_rows, check,
               registry={"pooling": "mean", "normalize": True}),
]  # fmt: skip
