"""Oracle cases for ``summarization``, ``translation`` and ``text2text-generation``: tiny BART and T5.

transformers 5 has no pipelines for these tasks, so the oracle is ``model.generate()`` on each
input alone (``prefix + text``, truncated to the model's limit), with ``output_scores`` and
``compute_transition_scores`` for the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluice.families.generation import item_seed
from tests.models import OracleCase
from tests.models.common import build_wordpiece, mixed_texts, save
from tests.models.text_generation import favour_eos, generate_alone, load

TOL = 1e-4
# The shared WordPiece tokenizer's special ids.
PAD, CLS, SEP = 0, 2, 3
EN_DE = {"prefix": "translate English to German: ", "num_beams": 3, "max_length": 10}


def build_bart(path: Path, seed: int = 0, eos_boost: float = 1.6) -> Path:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    config = BartConfig(vocab_size=600, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                        pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, decoder_start_token_id=CLS,
                        forced_eos_token_id=None, init_std=0.2)  # fmt: skip
    model = BartForConditionalGeneration(config).eval()
    favour_eos(model, SEP, eos_boost)
    return save(model, build_wordpiece(), path)


def build_t5(path: Path, seed: int = 1) -> Path:
    """T5 with a translation prefix and generation defaults in ``task_specific_params``, as t5-small has."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=600, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      pad_token_id=PAD, eos_token_id=SEP, decoder_start_token_id=PAD, initializer_factor=2.0,
                      task_specific_params={"translation_en_to_de": EN_DE})  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    favour_eos(model, SEP, 2.0)
    return save(model, build_wordpiece(), path)


def seq2seq_alone(path: Path, text: str, options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    tokenizer, model = load(path, "AutoModelForSeq2SeqLM")
    enc = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    row = generate_alone(model, inputs, options, seed)
    row["generated_text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
    return row


def generate_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The oracle: each input alone, with what Sluice derives from the params spelt out."""
    options = {k: v for k, v in params.items() if k not in ("seed", "prefix", "src_lang", "tgt_lang")}
    prefix = params.get("prefix", "")
    if (params.get("src_lang"), params.get("tgt_lang")) == ("en", "de"):
        prefix = EN_DE["prefix"]
        defaults = {k: v for k, v in EN_DE.items() if k != "prefix"}
        options = {**defaults, **options}
    rows = []
    for i, x in enumerate(inputs):
        seed = item_seed(params.get("seed", 0), i) if params.get("do_sample") else None
        rows.append(seq2seq_alone(path, prefix + x["text"], options, seed))
    return rows


def check_for(key: str | None):  # type: ignore[no-untyped-def]
    def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
        assert actual["error"] is None, actual["error"]
        assert actual["label"] is None
        output = actual["output"]
        assert output["generated_text"] == expected["generated_text"]
        if key:
            assert output[key] == expected["generated_text"]
        assert output["n_new_tokens"] == expected["n_new_tokens"]
        assert output["finish_reason"] == expected["finish_reason"]
        assert actual["score"] == pytest.approx(expected["score"], abs=TOL)

    return check


def _inputs(n: int, seed: int) -> list[dict[str, Any]]:
    texts = mixed_texts(n, seed=seed)  # one of them far past 128 tokens: truncated like the oracle's
    return [{"text": t[:600] if i != 1 else t} for i, t in enumerate(texts)]


CASES = [
    OracleCase("tiny-bart-summarization", "summarization", build_bart, lambda: _inputs(30, 2), generate_rows,
               check_for("summary_text"), params={"max_new_tokens": 12}),
    OracleCase("tiny-t5-translation", "translation", build_t5, lambda: _inputs(24, 3), generate_rows,
               check_for("translation_text"),
               params={"src_lang": "en", "tgt_lang": "de", "no_repeat_ngram_size": 2, "length_penalty": 0.8,
                       "early_stopping": True}),
    OracleCase("tiny-bart-text2text", "text2text-generation", lambda p: build_bart(p, seed=3, eos_boost=2.0),
               lambda: _inputs(20, 4), generate_rows, check_for(None),
               params={"prefix": "question: ", "num_beams": 2, "min_length": 3, "max_length": 11,
                       "early_stopping": "never", "repetition_penalty": 1.3}),
]  # fmt: skip
