"""Oracle cases for ``text-generation``: tiny GPT-2 and Llama models against ``pipeline("text-generation")``.

The oracle runs every prompt alone: text from ``pipeline(..., return_full_text=False,
handle_long_generation="hole")`` and, for the score, the same item through ``model.generate()``
with ``output_scores`` and ``compute_transition_scores`` (the pipeline returns no scores).
Sampled cases seed each item with ``torch.manual_seed(seed + item)`` first.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sluice.families.generation import item_seed
from tests.models import OracleCase
from tests.models.common import mixed_texts, save, training_texts

TOL = 1e-4
EOS = "<|endoftext|>"
#: The Llama tokenizer's chat template (so a tiny chat model exists): it writes the bos token
#: itself, which is why rendered conversations are tokenised without special tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@cache
def _bpe(bos: str | None, pad: str | None) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained in memory; it decodes every byte back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS] + [t for t in (bos, pad) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(training_texts(), trainer)
    if bos:  # Llama-style: the tokenizer puts a bos token before every prompt
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=bos or EOS, pad_token=pad, model_max_length=128,
        model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip


def build_gpt2(path: Path, seed: int = 0) -> Path:
    """GPT-2 whose tokenizer has no pad token (padding falls back to eos, as for the real GPT-2)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bpe(None, None)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=0, eos_token_id=0, initializer_range=0.2)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    favour_eos(model, 0)
    return save(model, tokenizer, path)


def build_llama(path: Path, seed: int = 1) -> Path:
    """Llama with a bos token before each prompt, a pad token of its own and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _bpe("<s>", "<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=0, pad_token_id=2, initializer_range=0.2)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    favour_eos(model, 0)
    return save(model, tokenizer, path)


def favour_eos(model: Any, eos: int, boost: float = 1.6) -> None:
    """Random weights rarely pick eos; a longer eos output row makes about half the inputs stop early."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight[eos].mul_(boost)


def _inputs(n: int, seed: int = 1) -> list[dict[str, Any]]:
    texts = [t[:160] for t in mixed_texts(n, seed=seed)]
    texts[1] = mixed_texts(2)[1][:2000]  # far past the model's 128 positions: the prompt keeps its tail
    texts[2] = ""  # generation starts from the bos token
    return [{"text": t} for t in texts]


@cache
def load(path: Path, auto_class: str = "AutoModelForCausalLM") -> tuple[Any, Any]:
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(path).eval()
    return transformers.AutoTokenizer.from_pretrained(path), model


def generate_alone(model: Any, inputs: dict[str, Any], options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """One input through ``model.generate()``: new tokens, finish and mean transition log-probability."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**inputs, **options, output_scores=True, return_dict_in_generate=True)
    beams = options.get("num_beams", model.generation_config.num_beams or 1) > 1
    scores = model.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                             normalize_logits=not beams)[0].tolist()  # fmt: skip
    start = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    tokens = out.sequences[0, start:].tolist()
    eos = model.generation_config.eos_token_id
    n = tokens.index(eos) + 1 if eos in tokens else len(tokens)
    row = {"tokens": tokens[:n], "n_new_tokens": n, "finish_reason": "eos" if eos in tokens else "length",
           "score": sum(scores[:n]) / n}  # fmt: skip
    if beams and options.get("length_penalty", 1.0) == 1.0:
        assert float(out.sequences_scores[0]) == pytest.approx(row["score"], abs=TOL)
    return row


def prompt_alone(path: Path, text: str, options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """One prompt, tokenised and cut as the pipeline does with ``handle_long_generation="hole"``."""
    import torch

    tokenizer, model = load(path)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    ids = ids[:, -(tokenizer.model_max_length - options["max_new_tokens"]) :]
    if ids.shape[1] == 0:  # the pipeline passes no input_ids: generate() starts from bos
        ids = torch.tensor([[model.generation_config.bos_token_id]])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    row = generate_alone(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                         {**options, "pad_token_id": pad}, seed)  # fmt: skip
    row["generated_text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
    return row


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    import torch
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(path), device="cpu")
    options = {k: v for k, v in params.items() if k != "seed"}
    options.setdefault("do_sample", False)
    rows = []
    for i, x in enumerate(inputs):
        seed = item_seed(params.get("seed", 0), i) if options["do_sample"] else None
        if seed is not None:
            torch.manual_seed(seed)
        text = generator(x["text"], return_full_text=False, handle_long_generation="hole", **options)
        row = prompt_alone(path, x["text"], options, seed)
        assert row["generated_text"] == text[0]["generated_text"], (i, row, text)
        rows.append(row)
    return rows


def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] is None
    assert actual["output"]["generated_text"] == expected["generated_text"]
    assert actual["output"]["n_new_tokens"] == expected["n_new_tokens"]
    assert actual["output"]["finish_reason"] == expected["finish_reason"]
    assert actual["score"] == pytest.approx(expected["score"], abs=TOL)


CASES = [
    OracleCase("tiny-gpt2", "text-generation", build_gpt2, lambda: _inputs(30), pipeline_rows, check,
               params={"max_new_tokens": 12}),
    OracleCase("tiny-llama-beams", "text-generation", build_llama, lambda: _inputs(24, seed=4), pipeline_rows, check,
               params={"max_new_tokens": 10, "num_beams": 3, "no_repeat_ngram_size": 3}),
    OracleCase("tiny-gpt2-sampled", "text-generation", lambda p: build_gpt2(p, seed=2), lambda: _inputs(24, seed=5),
               pipeline_rows, check,
               params={"max_new_tokens": 12, "do_sample": True, "seed": 7, "temperature": 0.8, "top_k": 40,
                       "top_p": 0.9, "repetition_penalty": 1.2}),
]  # fmt: skip
