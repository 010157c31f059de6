"""Oracle cases for the generation strategies: stop strings, several sequences, bad words and
suppressed tokens, typical / epsilon sampling, assisted decoding, prompt lookup, custom code.

The oracle is ``model.generate`` with the same arguments, one item at a time, sampled items after
``torch.manual_seed(seed + item)``; ``stop`` is ``stop_strings`` (with the tokenizer), ``bad_words``
is ``bad_words_ids`` from ``tokenizer(words, add_special_tokens=False)``, an ``assistant_model``
is the registered draft model loaded beside the main one. Every sequence is finished as Sluice
documents it: up to its first eos; ``"stop"`` (text cut before the first stop string, the fewest
tokens holding it) when a stop string appears, or when ``StopStringCriteria`` ended it; the score
is the mean log-probability of its tokens from ``compute_transition_scores``. Several sequences are
ranked by score (ties in ``generate``'s order).

The assisted cases' draft is a case of its own (``tiny-gpt2-draft``), so that it is registered;
the test harnesses build the model a case's ``assistant_model`` names before running the case.
The custom-code case's ``custom_generate`` directory is written, content-addressed, under the
temp dir when this module is imported.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sluice.families.generation import item_seed
from sluice.remote_code import code_sha256, manifest_sha256
from tests.models import OracleCase
from tests.models.common import mixed_texts, save
from tests.models.seq2seq import build_bart
from tests.models.text_generation import _bpe, build_gpt2, build_llama, favour_eos, load

TOL = 1e-4
DRAFT = "tiny-gpt2-draft"
BART_DRAFT = "tiny-bart-draft"
#: a model directory without Python files: the hash trust_remote_code entries pin then
EMPTY_CODE_SHA = manifest_sha256({})

#: A greedy loop that never repeats the previous token, as a Hub ``custom_generate/generate.py``:
#: ``generate(model, ...)`` receives every ``generate()`` argument, ``model`` in place of ``self``.
CUSTOM_GENERATE = """import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput


def generate(model, inputs=None, input_ids=None, attention_mask=None, max_new_tokens=16, pad_token_id=0,
             output_scores=False, return_dict_in_generate=False, **kwargs):
    input_ids = input_ids if input_ids is not None else inputs
    eos = model.generation_config.eos_token_id
    scores = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1, :].float()
        logits[:, input_ids[:, -1]] = -float("inf")  # never the previous token again
        token = logits.argmax(-1, keepdim=True)
        scores.append(logits)
        input_ids = torch.cat([input_ids, token], dim=-1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(token)], dim=-1)
        if int(token) == eos:
            break
    if return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=input_ids, scores=tuple(scores) if output_scores else None)
    return input_ids
"""


@cache
def custom_generate_dir() -> Path:
    """A directory holding ``custom_generate/generate.py`` (its path names its hash, so every process agrees)."""
    import hashlib

    digest = hashlib.sha256(CUSTOM_GENERATE.encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"sluice-test-custom-generate-{digest}"
    if not (root / "custom_generate" / "generate.py").is_file():
        staging = Path(tempfile.mkdtemp(prefix="sluice-custom-generate-"))
        (staging / "custom_generate").mkdir()
        (staging / "custom_generate" / "generate.py").write_text(CUSTOM_GENERATE, encoding="utf-8")
        with contextlib.suppress(OSError):  # another process made it first
            staging.rename(root)
    return root


def build_draft(path: Path) -> Path:
    """A one-layer GPT-2 with the tiny GPT-2s' tokenizer: the assistant."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bpe(None, None)
    torch.manual_seed(5)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=0, eos_token_id=0, initializer_range=0.2)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    favour_eos(model, 0)
    return save(model, tokenizer, path)


def _inputs(n: int, seed: int) -> list[dict[str, Any]]:
    texts = [t[:120] for t in mixed_texts(n, seed=seed)]
    texts[1] = texts[1][-300:]
    return [{"text": t} for t in texts]


def _finish(tokenizer: Any, eos: int, tokens: list[int], scores: list[float], stops: list[str],
            stopped_at: int | None) -> dict[str, Any]:  # fmt: skip
    """A sequence finished as Sluice documents it (see the module docstring)."""
    end = tokens.index(eos) if eos in tokens else None
    if stopped_at is not None and (end is None or stopped_at <= end):
        n, reason = stopped_at, "stop"
    else:
        n, reason = (len(tokens), "length") if end is None else (end + 1, "eos")
    text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
    found = [text.find(s) for s in stops if s in text]
    if found:
        n = next(m for m in range(1, n + 1) if any(s in tokenizer.decode(tokens[:m], skip_special_tokens=True)
                                                  for s in stops))  # fmt: skip
        text, reason = text[: min(found)], "stop"
    mean = sum(scores[:n]) / n if n else math.nan
    return {"generated_text": text, "n_new_tokens": n, "finish_reason": reason,
            "score": mean if math.isfinite(mean) else None}  # fmt: skip


def _stopped_at(tokenizer: Any, sequence: Any, start: int, stops: list[str]) -> int | None:
    """How many new tokens ``sequence`` had when ``StopStringCriteria`` first held (None: never)."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    criterion = StopStringCriteria(tokenizer=tokenizer, stop_strings=stops)
    for k in range(1, sequence.shape[0] - start + 1):
        if bool(criterion(sequence[None, : start + k], None)[0]):
            return k
    return None


def _options(tokenizer: Any, params: dict[str, Any], path: Path, auto_class: str) -> dict[str, Any]:
    """``generate()`` arguments for Sluice's params, translated as documented."""
    options = {k: v for k, v in params.items() if k not in ("seed", "stop", "bad_words", "assistant_model")}
    if params.get("stop"):
        stop = params["stop"]
        options.update(stop_strings=[stop] if isinstance(stop, str) else stop, tokenizer=tokenizer)
        if params.get("assistant_model"):  # generate(stop_strings=...) raises with an assistant (transformers#48039)
            from transformers import StoppingCriteriaList
            from transformers.generation.stopping_criteria import StopStringCriteria

            stops = options.pop("stop_strings")
            options["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(options.pop("tokenizer"), stops)])
    if params.get("bad_words"):
        options["bad_words_ids"] = tokenizer(params["bad_words"], add_special_tokens=False)["input_ids"]
    if params.get("assistant_model"):
        name = params["assistant_model"]
        draft = next(c for c in CASES if c.model == name).build(path.parent / name)
        options["assistant_model"] = load(draft, auto_class)[1]
    return options


def seq2seq_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    return strategy_rows(path, inputs, params, auto_class="AutoModelForSeq2SeqLM")


def strategy_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any], custom: Path | None = None,
                  auto_class: str = "AutoModelForCausalLM") -> list[dict[str, Any]]:  # fmt: skip
    """The oracle: each input alone through ``model.generate`` (a prompt's tail, or an encoder input's head)."""
    import torch

    tokenizer, model = load(path, auto_class)
    seq2seq = model.config.is_encoder_decoder
    options = _options(tokenizer, params, path, auto_class)
    if custom is not None:
        options.update(custom_generate=str(custom), trust_remote_code=True)
    stop = params.get("stop") or []
    stops = [stop] if isinstance(stop, str) else list(stop)
    eos = model.generation_config.eos_token_id
    rows = []
    for i, x in enumerate(inputs):
        ids = tokenizer(x["text"], truncation=seq2seq, return_tensors="pt")["input_ids"]
        if not seq2seq:
            ids = ids[:, -(tokenizer.model_max_length - params["max_new_tokens"]) :]
        if params.get("do_sample"):
            torch.manual_seed(item_seed(params.get("seed", 0), i))
        pad = tokenizer.pad_token_id if seq2seq else eos
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options, pad_token_id=pad,
                             output_scores=True, return_dict_in_generate=True)  # fmt: skip
        beams = getattr(out, "beam_indices", None)
        scores = model.compute_transition_scores(out.sequences, out.scores, beams, normalize_logits=beams is None)
        start = 1 if seq2seq else ids.shape[1]
        candidates = []
        for seq, sc in zip(out.sequences, scores, strict=True):
            at = _stopped_at(tokenizer, seq, start, stops) if stops and beams is None else None
            candidates.append(_finish(tokenizer, eos, seq[start:].tolist(), sc.tolist(), stops, at))
        rows.append(_ranked(candidates))
    return rows


def _ranked(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    if len(candidates) == 1:
        return candidates[0]
    order = sorted(candidates, key=lambda r: -r["score"] if r["score"] is not None else math.inf)
    return {**order[0], "sequences": order}


def check(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    output = actual["output"]
    for key in ("generated_text", "n_new_tokens", "finish_reason"):
        assert output[key] == expected[key], (key, output, expected)
    assert actual["score"] == pytest.approx(expected["score"], abs=TOL)
    if "sequences" in expected:
        assert len(output["sequences"]) == len(expected["sequences"])
        for got, want in zip(output["sequences"], expected["sequences"], strict=True):
            assert {k: got[k] for k in ("generated_text", "n_new_tokens", "finish_reason")} == {
                k: want[k] for k in ("generated_text", "n_new_tokens", "finish_reason")}  # fmt: skip
            assert got["score"] == pytest.approx(want["score"], abs=TOL)


def custom_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    return strategy_rows(path, inputs, params, custom=custom_generate_dir())


STOPS = ["))", "ig", "ame "]
CASES = [
    OracleCase("tiny-gpt2-stops", "text-generation", lambda p: build_gpt2(p, seed=0), lambda: _inputs(16, 6),
               strategy_rows, check,
               params={"max_new_tokens": 14, "stop": STOPS, "min_new_tokens": 2, "bad_words": ["ine", " ab"],
                       "suppress_tokens": [5, 9]}),
    OracleCase("tiny-gpt2-n-sampled", "text-generation", lambda p: build_gpt2(p, seed=2), lambda: _inputs(12, 7),
               strategy_rows, check,
               params={"max_new_tokens": 10, "do_sample": True, "seed": 3, "num_return_sequences": 3,
                       "typical_p": 0.9, "epsilon_cutoff": 0.001, "stop": "and"}),
    OracleCase("tiny-llama-n-beams", "text-generation", build_llama, lambda: _inputs(10, 8), strategy_rows, check,
               params={"max_new_tokens": 8, "num_beams": 4, "num_return_sequences": 3, "stop": ["lue", "us"]}),
    OracleCase(DRAFT, "text-generation", build_draft, lambda: _inputs(4, 13), strategy_rows, check,
               params={"max_new_tokens": 6}),
    OracleCase("tiny-gpt2-assisted", "text-generation", lambda p: build_gpt2(p, seed=3),
               lambda: _inputs(10, 9), strategy_rows, check,
               params={"max_new_tokens": 12, "assistant_model": DRAFT, "stop": [" th", "li"]}),
    OracleCase("tiny-gpt2-assisted-sampled", "text-generation", lambda p: build_gpt2(p, seed=4),
               lambda: _inputs(10, 10), strategy_rows, check,
               params={"max_new_tokens": 12, "assistant_model": DRAFT, "do_sample": True, "seed": 1,
                       "temperature": 0.7, "stop": "ing"}),
    OracleCase("tiny-gpt2-prompt-lookup", "text-generation", lambda p: build_gpt2(p, seed=6), lambda: _inputs(10, 11),
               strategy_rows, check, params={"max_new_tokens": 12, "prompt_lookup_num_tokens": 3}),
    OracleCase("tiny-bart-strategies", "summarization", lambda p: build_bart(p, seed=5), lambda: _inputs(10, 14),
               seq2seq_rows, check,
               params={"max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2, "bad_words": ["the"],
                       "stop": ["de", "aa"], "min_new_tokens": 1}),
    OracleCase(BART_DRAFT, "summarization", lambda p: build_bart(p, seed=8), lambda: _inputs(4, 15), seq2seq_rows,
               check, params={"max_new_tokens": 6}),
    OracleCase("tiny-bart-assisted", "summarization", lambda p: build_bart(p, seed=9), lambda: _inputs(8, 16),
               seq2seq_rows, check, params={"max_new_tokens": 10, "assistant_model": BART_DRAFT, "stop": "de"}),
    OracleCase("tiny-bart-prompt-lookup", "summarization", lambda p: build_bart(p, seed=10), lambda: _inputs(8, 17),
               seq2seq_rows, check, params={"max_new_tokens": 10, "prompt_lookup_num_tokens": 3}),
    OracleCase("tiny-gpt2-custom-generate", "text-generation", lambda p: build_gpt2(p, seed=7),
               lambda: _inputs(10, 12), custom_rows, check, params={"max_new_tokens": 10},
               registry={"trust_remote_code": True, "code_sha256": EMPTY_CODE_SHA,
                         "custom_generate": str(custom_generate_dir()),
                         "custom_generate_sha256": code_sha256(custom_generate_dir())}),
]  # fmt: skip
