"""What the generation families share: option checks, batched ``generate()`` and per-token scores.

Not a family itself: the generation families subclass :class:`GenerationFamily`.

A generation family's ``forward`` is one ``model.generate()`` call per group of rows that share
their generation options (items may override job options, so one batch can hold several groups).

**Scores.** ``score`` is the mean log-probability of the generated tokens (up to and including
the end-of-sequence token): at each step, ``log_softmax`` of the scores *after* the logits
processors (repetition penalty, n-gram blocking, temperature, top-k/top-p) taken at the chosen
token. That is ``model.compute_transition_scores(sequences, scores, normalize_logits=True)`` for
greedy and sampled decoding, and ``compute_transition_scores(sequences, scores, beam_indices)``
for beam search (whose scores are already processed log-probabilities), averaged over the new
tokens; with beams and ``length_penalty=1`` it equals ``sequences_scores``. Instead of keeping
``output_scores`` (steps x rows x vocabulary floats, gigabytes for a large vocabulary), a
:class:`TokenScorer` logits processor records only what the scores need as generation runs: the
chosen token's log-probability, or for beam search each row's top candidates, among which every
selected continuation lies. The tests check the recorded scores against ``compute_transition_scores``.

**Sampling** is seeded per item: item ``i`` of a job with ``seed=s`` (default 0) samples with its
own ``torch.Generator`` seeded ``s + i``, so the text depends on the item alone, never on which
items share its batch, and equals ``torch.manual_seed(s + i)`` followed by the item run alone
through ``pipeline(...)`` or ``model.generate(do_sample=True, ...)``. ``generate`` runs with
``do_sample=False`` and the sampling warpers plus :class:`TokenScorer` as logits processors: the
scorer draws each row's token from the warped distribution with the row's generator, exactly
as ``generate``'s own ``torch.multinomial`` would for a batch of one, then masks every other
token so the greedy step picks it. Beam-search sampling (``do_sample`` with ``num_beams > 1``)
is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from sluice.errors import ItemError, ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import text_field
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
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
#: options that only shape sampling; ``generate`` gets them as warpers built here, not as options
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")
#: item fields that are generation-related but are not ``generate()`` keyword arguments
NOT_GENERATE = {"seed", "prefix", "src_lang", "tgt_lang", "stop"}
#: most stop sequences an item may give (OpenAI's limit)
MAX_STOPS = 4
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """The accepted values of one option: ``kind`` is int, float, bool, str or early_stopping."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None when it is accepted."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "early_stopping":
            return None if isinstance(value, bool) or value == "never" else 'must be true, false or "never"'
        if self.kind == "str":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "stops":
            stops = [value] if isinstance(value, str) else value
            good = isinstance(stops, list) and 0 < len(stops) <= MAX_STOPS
            return None if good and all(isinstance(x, str) and x for x in stops) else (
                f"must be a non-empty string or a list of 1 to {MAX_STOPS} non-empty strings")  # fmt: skip
        numeric = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            return "must be an integer" if self.kind == "int" else "must be a number"
        below = value <= self.low if self.low_open else value < self.low  # type: ignore[operator]
        if below or value > self.high:  # type: ignore[operator]
            return f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        return None


RULES: dict[str, Rule] = {
    "max_new_tokens": Rule("int", 1, 2048),
    "max_length": Rule("int", 1, 4096),
    "min_length": Rule("int", 0, 4096),
    "do_sample": Rule("bool"),
    "seed": Rule("int", 0, MAX_SEED),
    "num_beams": Rule("int", 1, 32),
    "temperature": Rule("float", 0, 100, low_open=True),
    "top_p": Rule("float", 0, 1, low_open=True),
    "top_k": Rule("int", 0, 1_000_000),
    "repetition_penalty": Rule("float", 0, 100, low_open=True),
    "no_repeat_ngram_size": Rule("int", 0, 64),
    "length_penalty": Rule("float", -100, 100),
    "early_stopping": Rule("early_stopping"),
    "prefix": Rule("str"),
    "src_lang": Rule("str"),
    "tgt_lang": Rule("str"),
    "stop": Rule("stops"),
}


def check_options(fields: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    """Raise :class:`ValidationError` naming ``where`` (an item, or the job) and the field at fault."""
    for name in names:
        value = fields.get(name)
        if value is not None and (problem := RULES[name].problem(value)):
            raise ValidationError(f"{where}: {name!r} {problem}, got {value!r}")
    if fields.get("do_sample") and (fields.get("num_beams") or 1) > 1:
        raise ValidationError(
            f"{where}: 'do_sample' with 'num_beams' > 1 (beam-search sampling) is not supported; "
            "sample with num_beams=1 or search beams without do_sample"
        )
    low, high = fields.get("min_length"), fields.get("max_length")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise ValidationError(f"{where}: 'min_length' ({low}) is above 'max_length' ({high})")


def item_seed(seed: int, item: int) -> int:
    """The seed item ``item`` samples with under a job ``seed``."""
    return (seed + item) % 2**63


def _eos_ids(value: Any) -> list[int]:
    """A generation config's ``eos_token_id`` (one id, a list or None) as a list."""
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


class TokenScorer:
    """A logits processor that records the chosen tokens' log-probabilities (and samples, per row).

    ``mode`` is ``greedy``, ``sample`` (then ``seeds`` gives one seed per row) or ``beam`` (then
    ``keep`` is how many candidates per row beam search considers). It must run after every
    other processor: ``generate`` puts the processors it is given after its own ones.
    """

    def __init__(self, mode: str, device: Any = "cpu", seeds: list[int] | None = None, keep: int = 0) -> None:
        import torch

        self.mode = mode
        self.keep = keep
        self.steps: list[tuple[Any, Any]] = []
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds or []]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.mode == "beam":
            self.steps.append(scores.topk(min(self.keep, scores.shape[-1]), dim=-1))
            return scores
        if self.mode == "sample":
            # generate()'s own sampling, one row at a time with that row's generator.
            probs = torch.nn.functional.softmax(scores, dim=-1)
            tokens = torch.cat(
                [torch.multinomial(probs[i : i + 1], 1, generator=g)[0] for i, g in enumerate(self.generators)]
            )
        else:
            tokens = torch.argmax(scores, dim=-1)
        logp = torch.nn.functional.log_softmax(scores, dim=-1).gather(1, tokens[:, None])[:, 0]
        self.steps.append((logp, None))
        if self.mode == "sample":
            scores = torch.full_like(scores, -math.inf).scatter_(1, tokens[:, None], 0.0)
        return scores

    def transition_logprobs(self, new_tokens: Any, beam_indices: Any = None) -> Any:
        """Log-probability of each new token, shape ``(rows, steps)``, like ``compute_transition_scores``."""
        import torch

        steps = min(new_tokens.shape[1], len(self.steps))
        if self.mode != "beam":
            return torch.stack([lp for lp, _ in self.steps[:steps]], dim=1)
        values = torch.stack([v for v, _ in self.steps[:steps]])  # steps, beam rows, keep
        indices = torch.stack([i for _, i in self.steps[:steps]])
        rows = beam_indices[:, :steps].long().clamp(min=0)  # -1 past a finished beam's end
        at = torch.arange(steps, device=rows.device)[None, :]
        hit = indices[at, rows] == new_tokens[:, :steps, None]
        found = torch.where(hit, values[at, rows], torch.zeros_like(values[at, rows])).sum(-1)
        return torch.where(hit.any(-1), found, torch.full_like(found, math.nan))


def sampling_warpers(config: dict[str, Any], device: Any) -> list[Any]:
    """The warpers ``generate(do_sample=True)`` would add for ``config``, in its order."""
    from transformers.generation import logits_process as lp

    out: list[Any] = []
    if config["temperature"] != 1.0:
        out.append(lp.TemperatureLogitsWarper(config["temperature"]))
    if config.get("top_h") is not None:
        out.append(lp.TopHLogitsWarper(top_h=config["top_h"]))
    if config["top_k"]:
        out.append(lp.TopKLogitsWarper(top_k=config["top_k"]))
    if config["top_p"] < 1.0:
        out.append(lp.TopPLogitsWarper(top_p=config["top_p"]))
    if config.get("min_p") is not None:
        out.append(lp.MinPLogitsWarper(min_p=config["min_p"]))
    if config["typical_p"] < 1.0:
        out.append(lp.TypicalLogitsWarper(mass=config["typical_p"]))
    if 0.0 < config["epsilon_cutoff"] < 1.0:
        out.append(lp.EpsilonLogitsWarper(epsilon=config["epsilon_cutoff"]))
    if 0.0 < config["eta_cutoff"] < 1.0:
        out.append(lp.EtaLogitsWarper(epsilon=config["eta_cutoff"], device=device))
    return out


class GenerationFamily(HFTextFamily):
    """Tokenise, pad, ``generate`` per option group, decode; subclasses say how inputs are built."""

    #: item fields / job params this family accepts
    options: ClassVar[tuple[str, ...]]
    #: ``max_new_tokens`` when neither it nor ``max_length`` is given; None leaves the model's own
    default_max_new_tokens: ClassVar[int | None] = None
    padding_side: ClassVar[str] = "right"

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        unknown = sorted(set(params) - set(cls.options))
        if unknown:
            raise ValidationError(
                f"job params: unknown option(s) {', '.join(map(repr, unknown))} for {cls.task}; "
                f"accepted: {', '.join(cls.options)}"
            )
        check_options(params, cls.options, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        check_options(fields, cls.options, f"item {item}")

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        config = self.model.generation_config
        # The ids that stop generation (and end an item's tokens) are the generation config's.
        self.eos_ids = set(_eos_ids(config.eos_token_id))
        pads = [self.tokenizer.pad_token_id, config.pad_token_id, min(self.eos_ids, default=None),
                self.tokenizer.eos_token_id, 0]  # fmt: skip
        self.pad_id = int(next(p for p in pads if p is not None))
        self.model_defaults = {
            **GENERATE_DEFAULTS,
            **{k: v for k, v in config.to_dict().items() if v is not None and not k.startswith("_")},
        }

    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.pad_id, "attention_mask": 0}

    def generate_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The ``generate()`` keyword arguments an item asks for (defaults left to the model)."""
        chosen = {k: fields[k] for k in self.options if k not in NOT_GENERATE and fields.get(k) is not None}
        if self.default_max_new_tokens and "max_new_tokens" not in chosen and "max_length" not in chosen:
            chosen["max_new_tokens"] = self.default_max_new_tokens
        return chosen

    def effective(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options generation will run with: the item's, else the model's, else ``generate()``'s."""
        return {**self.model_defaults, **options}

    def new_token_limit(self, options: dict[str, Any]) -> int:
        """The most tokens generation can add (decoder-only ``max_length`` includes the prompt)."""
        config = self.effective(options)
        return int(config.get("max_new_tokens") or config["max_length"])

    def mode(self, options: dict[str, Any]) -> str:
        config = self.effective(options)
        if config["do_sample"]:
            if config["num_beams"] > 1:
                raise ItemError("beam-search sampling (do_sample with num_beams > 1) is not supported")
            return "sample"
        return "beam" if config["num_beams"] > 1 else "greedy"

    def encode_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[int]]:
        """Each item's input token ids, in one tokenizer call."""
        raise NotImplementedError

    def fit(self, ids: list[int], options: dict[str, Any]) -> list[int]:
        """The ids generation starts from; decoder-only families make room for the new tokens."""
        return ids

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """Every item's prompt row, tokenised in one call; an item whose options cannot run fails alone."""
        return self.batched(items, self._rows)

    def _rows(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One feature per item from one :meth:`encode_many` call; an :class:`ItemError` fails its item."""
        out: Prepared = []
        for (item, fields), ids in zip(items, self.encode_many(items), strict=True):
            try:
                out.append([self.feature(item, fields, ids)])
            except ItemError as exc:
                out.append(ItemResult(item=item, error=str(exc)))
        return out

    def feature(self, item: int, fields: dict[str, Any], ids: list[int]) -> Feature:
        """One item's row; its length counts prompt and new tokens for every beam, as memory does."""
        options = self.generate_options(fields)
        ids = self.fit(ids, options)
        mode = self.mode(options)
        beams = int(self.effective(options)["num_beams"])
        seed = item_seed(int(fields.get("seed") or 0), item) if mode == "sample" else None
        length = (len(ids) + self.new_token_limit(options)) * beams
        meta = {"options": options, "mode": mode, "seed": seed, "prompt_tokens": len(ids)}
        return Feature(item=item, ids={"input_ids": ids, "attention_mask": [1] * len(ids)}, length=length, meta=meta)

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        from sluice.families.collate import pad_features

        batch = pad_features(features, self.pad_values(), self.device, side=self.padding_side)
        batch["meta"] = [f.meta for f in features]
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        import torch

        meta = batch.pop("meta")
        groups: dict[str, list[int]] = {}
        for row, m in enumerate(meta):
            groups.setdefault(repr(sorted(m["options"].items())), []).append(row)
        out: list[Any] = [None] * len(meta)
        for rows in groups.values():
            pick = torch.tensor(rows, device=batch["input_ids"].device)
            inputs = {k: v.index_select(0, pick) for k, v in batch.items()}
            used = inputs["attention_mask"].bool().any(0)  # drop columns that are padding in every row
            inputs = {k: v[:, used] for k, v in inputs.items()}
            first = meta[rows[0]]
            results = self.generate(inputs, first["options"], first["mode"], [meta[r]["seed"] for r in rows])
            for row, result in zip(rows, results, strict=True):
                out[row] = result
        return out

    def generate(self, inputs: dict[str, Any], options: dict[str, Any], mode: str,
                 seeds: list[int | None]) -> list[tuple[list[int], list[float]]]:  # fmt: skip
        """New token ids and their log-probabilities, per row."""
        from transformers import LogitsProcessorList

        config = self.effective(options)
        kwargs = {k: v for k, v in options.items() if k not in SAMPLING_OPTIONS and k != "do_sample"}
        # Beam search picks among each row's best max(2, 1 + #eos) * num_beams candidates; keep a few more.
        keep = (2 + len(self.eos_ids)) * int(config["num_beams"])
        # Sampling rows always carry a seed (item_seed); the other modes take none.
        scorer = TokenScorer(mode, self.device, seeds=cast(list[int], seeds) if mode == "sample" else None, keep=keep)
        processors = [*sampling_warpers(config, self.device), scorer] if mode == "sample" else [scorer]
        # Only beam search needs the output object (for beam_indices); a plain tensor lets generate()
        # defer its stop checks instead of syncing with the GPU at every step.
        out = self.model.generate(
            **inputs, **kwargs, do_sample=False, pad_token_id=self.pad_id, num_return_sequences=1,
            logits_processor=LogitsProcessorList(processors), return_dict_in_generate=mode == "beam",
        )  # fmt: skip
        sequences = out.sequences if mode == "beam" else out
        start = 1 if self.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
        new = sequences[:, start:]
        logprobs = scorer.transition_logprobs(new, out.beam_indices if mode == "beam" else None)
        return list(zip(new.tolist(), logprobs.float().cpu().tolist(), strict=True))

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [self.result_for(f, ids, logprobs) for f, (ids, logprobs) in zip(features, outputs, strict=True)]

    def result_for(self, feature: Feature, ids: list[int], logprobs: list[float]) -> ItemResult:
        """One row's result: its new tokens up to and including the first end-of-sequence token."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        n = len(ids) if end is None else end + 1
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        return self.finished(feature, text, n, logprobs, "length" if end is None else "eos")

    def finished(self, feature: Feature, text: str, n: int, logprobs: list[float], reason: str) -> ItemResult:
        """The stored result of ``n`` new tokens decoding to ``text``; score = their mean log-probability."""
        mean = sum(logprobs[:n]) / n if n else math.nan
        output = {"generated_text": text, "n_new_tokens": n, "finish_reason": reason}
        return ItemResult(item=feature.item, score=mean if math.isfinite(mean) else None, output=self.output(output),
                          n_tokens=feature.meta["prompt_tokens"] + n)  # fmt: skip

    def output(self, output: dict[str, Any]) -> dict[str, Any]:
        """Subclasses add the field names their pipelines used."""
        return output
