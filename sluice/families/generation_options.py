"""The generation options Sluice accepts, and their submit-time checks (no torch, no weights).

Every option is checked by a :class:`Rule` (type and range), then :func:`check_options` refuses
the combinations ``generate()`` would reject or silently ignore: beam-search sampling, several
sequences from greedy search, assisted or prompt-lookup decoding with beams or several sequences.
:func:`check_strategy` checks what needs the registry: an ``assistant_model`` must be another
registered model of the same kind whose vocabulary matches (read from the two directories'
``config.json`` and tokenizer files, never from weights), and the strategies transformers 5 moved
to custom generation code (contrastive search, diverse beam search, DoLa) need an entry with a
pinned ``custom_generate`` directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError, UnknownModelError, ValidationError
from sluice.registry import ModelSpec, load_registry
from sluice.settings import Settings

#: ``generate()``'s own defaults for the options Sluice reads (``GenerationConfig._get_default_generation_params``),
#: used when neither the job nor the model's generation config sets them.
GENERATE_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}
#: options that only shape sampling; the batched path gives ``generate`` them as warpers built here
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff")
#: item fields that are generation-related but are not ``generate()`` keyword arguments
NOT_GENERATE = {"seed", "prefix", "src_lang", "tgt_lang", "stop"}
#: options that make an item run alone through ``generate`` itself (transformers runs them one at a time)
ALONE_OPTIONS = ("assistant_model", "prompt_lookup_num_tokens")
#: options only custom generation code reads (the strategies transformers 5 moved to the Hub)
CUSTOM_OPTIONS = ("penalty_alpha", "num_beam_groups", "diversity_penalty", "dola_layers")
#: most stop sequences an item may give (OpenAI's limit)
MAX_STOPS = 4
MAX_WORDS = 64
MAX_IDS = 1024
MAX_SEED = 2**32 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Rule:
    """The accepted values of one option: ``kind`` is int, float, bool, str, early_stopping, stops
    (1 to 4 strings), words (1 to 64 strings), ids (1 to 1024 token ids) or dola ("low", "high" or ids)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None when it is accepted."""
        if self.kind in _LIST_KINDS:
            return _LIST_KINDS[self.kind](value)
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "early_stopping":
            return None if isinstance(value, bool) or value == "never" else 'must be true, false or "never"'
        if self.kind == "str":
            return None if isinstance(value, str) else "must be a string"
        numeric = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            return "must be an integer" if self.kind == "int" else "must be a number"
        below = value <= self.low if self.low_open else value < self.low  # type: ignore[operator]
        if below or value > self.high:  # type: ignore[operator]
            return f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        return None


def _strings(most: int) -> Callable[[Any], str | None]:
    def problem(value: Any) -> str | None:
        items = [value] if isinstance(value, str) and most == MAX_STOPS else value
        good = isinstance(items, list) and 0 < len(items) <= most and all(isinstance(x, str) and x for x in items)
        single = "a non-empty string or " if most == MAX_STOPS else ""
        return None if good else f"must be {single}a list of 1 to {most} non-empty strings"

    return problem


def _ids(value: Any) -> str | None:
    good = isinstance(value, list) and 0 < len(value) <= MAX_IDS
    if good and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
        return None
    return f"must be a list of 1 to {MAX_IDS} token ids (integers >= 0)"


def _dola(value: Any) -> str | None:
    return None if value in ("low", "high") or _ids(value) is None else 'must be "low", "high" or a list of layer ids'


_LIST_KINDS: dict[str, Callable[[Any], str | None]] = {"stops": _strings(MAX_STOPS), "words": _strings(MAX_WORDS),
                                                        "ids": _ids, "dola": _dola}  # fmt: skip

RULES: dict[str, Rule] = {
    "max_new_tokens": Rule("int", 1, 2048),
    "min_new_tokens": Rule("int", 0, 2048),
    "max_length": Rule("int", 1, 4096),
    "min_length": Rule("int", 0, 4096),
    "do_sample": Rule("bool"),
    "seed": Rule("int", 0, MAX_SEED),
    "num_beams": Rule("int", 1, 32),
    "num_return_sequences": Rule("int", 1, 16),
    "temperature": Rule("float", 0, 100, low_open=True),
    "top_p": Rule("float", 0, 1, low_open=True),
    "top_k": Rule("int", 0, 1_000_000),
    "typical_p": Rule("float", 0, 1, low_open=True),
    "epsilon_cutoff": Rule("float", 0, 1),
    "repetition_penalty": Rule("float", 0, 100, low_open=True),
    "no_repeat_ngram_size": Rule("int", 0, 64),
    "length_penalty": Rule("float", -100, 100),
    "early_stopping": Rule("early_stopping"),
    "bad_words": Rule("words"),
    "suppress_tokens": Rule("ids"),
    "prefix": Rule("str"),
    "src_lang": Rule("str"),
    "tgt_lang": Rule("str"),
    "stop": Rule("stops"),
    "assistant_model": Rule("str"),
    "prompt_lookup_num_tokens": Rule("int", 1, 64),
    "penalty_alpha": Rule("float", 0, 1),
    "num_beam_groups": Rule("int", 1, 32),
    "diversity_penalty": Rule("float", 0, 100),
    "dola_layers": Rule("dola"),
}


def check_options(fields: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    """Raise :class:`ValidationError` naming ``where`` (an item, or the job) and the field at fault."""
    for name in names:
        value = fields.get(name)
        if value is not None and (problem := RULES[name].problem(value)):
            raise ValidationError(f"{where}: {name!r} {problem}, got {value!r}")
    beams, n = fields.get("num_beams") or 1, fields.get("num_return_sequences") or 1
    if fields.get("do_sample") and beams > 1:
        raise ValidationError(
            f"{where}: 'do_sample' with 'num_beams' > 1 (beam-search sampling) is not supported; "
            "sample with num_beams=1 or search beams without do_sample"
        )
    if n > 1 and not fields.get("do_sample") and n > beams:
        raise ValidationError(
            f"{where}: 'num_return_sequences' ({n}) needs do_sample, or num_beams of at least {n} (greedy search "
            "has one answer)"
        )
    low, high = fields.get("min_length"), fields.get("max_length")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise ValidationError(f"{where}: 'min_length' ({low}) is above 'max_length' ({high})")
    low, high = fields.get("min_new_tokens"), fields.get("max_new_tokens")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise ValidationError(f"{where}: 'min_new_tokens' ({low}) is above 'max_new_tokens' ({high})")
    alone = [name for name in ALONE_OPTIONS if fields.get(name) is not None]
    if len(alone) > 1:
        raise ValidationError(f"{where}: give 'assistant_model' or 'prompt_lookup_num_tokens', not both")
    if alone and (beams > 1 or n > 1):
        raise ValidationError(
            f"{where}: {alone[0]!r} (assisted decoding) runs greedy search or sampling only: "
            "drop num_beams / num_return_sequences"
        )


def item_seed(seed: int, item: int) -> int:
    """The seed item ``item`` samples with under a job ``seed``."""
    return (seed + item) % 2**63


# strategies that need the registry ---------------------------------------------------------------


def custom_generate_problem(spec: ModelSpec) -> str | None:
    """Why the entry's ``custom_generate`` may not run (its pins), or None (also when it has none)."""
    directory, sha = spec.options.get("custom_generate"), spec.options.get("custom_generate_sha256")
    if directory is None:
        return None if sha is None else "sets custom_generate_sha256 without custom_generate"
    if not isinstance(directory, str):
        return f"custom_generate must be a directory path, got {directory!r}"
    if not spec.trust_remote_code:
        return "sets custom_generate, whose Python code the worker runs, without trust_remote_code = true"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        return ("sets custom_generate without custom_generate_sha256 (64 hexadecimal digits); print it, after "
                "reading the code, with `sluice models hash DIR`")  # fmt: skip
    return None


def check_strategy(fields: dict[str, Any], spec: ModelSpec, settings: Settings | None, where: str,
                   auto_class: str) -> None:  # fmt: skip
    """Refuse strategy options the registry entry cannot serve (see the module docstring)."""
    custom = [name for name in CUSTOM_OPTIONS if fields.get(name) is not None]
    problem = custom_generate_problem(spec)
    if problem:
        raise ValidationError(f"{where}: registry model {spec.name!r} {problem}")
    if custom and "custom_generate" not in spec.options:
        raise ValidationError(
            f"{where}: {custom[0]!r} selects a decoding strategy transformers 5 moved to custom generation code; "
            f'register model {spec.name!r} with custom_generate = "DIR" (a local copy of that code) to use it'
        )
    alone = next((name for name in ALONE_OPTIONS if fields.get(name) is not None), None)
    if alone and "custom_generate" in spec.options:
        raise ValidationError(f"{where}: {alone!r} does not combine with model {spec.name!r}'s custom_generate")
    assistant = fields.get("assistant_model")
    if isinstance(assistant, str) and settings is not None:
        message = assistant_problem(spec.path, assistant, settings.models_file, auto_class)
        if message:
            raise ValidationError(f"{where}: 'assistant_model' {message}")


@cache
def assistant_problem(path: str, name: str, models_file: Path | None, auto_class: str) -> str | None:
    """Why registered model ``name`` cannot assist the model at ``path`` (cached: every item of a job asks)."""
    try:
        other = load_registry(models_file).get(name)
    except (UnknownModelError, ConfigError) as exc:
        return str(exc)
    from sluice.families import family_for

    kind = getattr(family_for(other.task), "auto_class", None)
    if kind != auto_class:
        return f"{name!r} is a {other.task} model ({kind}); the assistant must be a {auto_class} model too"
    return vocabulary_problem(path, other.path, name)


def vocabulary_problem(main: str, assistant: str, name: str) -> str | None:
    """Why the two model directories' vocabularies differ, or None (also when they cannot be read)."""
    sizes = [_vocab_size(Path(p)) for p in (main, assistant)]
    if None not in sizes and sizes[0] != sizes[1]:
        return (f"{name!r} has a vocabulary of {sizes[1]} tokens, the model {sizes[0]}; assisted decoding needs "
                "the same tokenizer")  # fmt: skip
    vocabularies = [_vocab_digest(Path(p)) for p in (main, assistant)]
    if None not in vocabularies and vocabularies[0] != vocabularies[1]:
        return f"{name!r} has another tokenizer vocabulary than the model; assisted decoding needs the same tokenizer"
    return None


def _vocab_size(directory: Path) -> int | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    size = text.get("vocab_size") if isinstance(text, dict) else None
    return size if isinstance(size, int) else None


def _vocab_digest(directory: Path) -> str | None:
    """A digest of the token -> id map saved in ``tokenizer.json`` (else ``vocab.json`` / ``vocab.txt``)."""
    try:
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        added = sorted((t["content"], t["id"]) for t in data.get("added_tokens", []))
        return hashlib.sha256(json.dumps([vocab, added], sort_keys=True).encode()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for name in ("vocab.json", "vocab.txt"):
        if (directory / name).is_file():
            return hashlib.sha256((directory / name).read_bytes()).hexdigest()
    return None
