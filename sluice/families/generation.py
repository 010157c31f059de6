"""What the generation families share: batched ``generate()``, per-token scores, several sequences.

Not a family itself: the generation families subclass :class:`GenerationFamily`. The options and
their submit-time checks are in :mod:`sluice.families.generation_options`; items that must run
alone through ``generate`` itself (assisted decoding, prompt lookup, custom generation code) in
:mod:`sluice.families.generation_alone`.

A generation family's ``forward`` is one ``model.generate()`` call per group of rows that share
their generation options (items may override job options, so one batch can hold several groups).

**Scores.** ``score`` is the mean log-probability of the generated tokens (up to and including
the end-of-sequence token): at each step, ``log_softmax`` of the scores *after* the logits
processors (repetition penalty, n-gram blocking, bad words, temperature, top-k/top-p, ...) taken
at the chosen token. That is ``model.compute_transition_scores(sequences, scores,
normalize_logits=True)`` for greedy and sampled decoding, and ``compute_transition_scores(sequences,
scores, beam_indices)`` for beam search (whose scores are already processed log-probabilities),
averaged over the new tokens; with beams and ``length_penalty=1`` it equals ``sequences_scores``.
Instead of keeping ``output_scores`` (steps x rows x vocabulary floats, gigabytes for a large
vocabulary), a :class:`TokenScorer` logits processor records only what the scores need as
generation runs: the chosen token's log-probability, or for beam search each row's top
candidates, among which every selected continuation lies.

**Sampling** is seeded per item: item ``i`` of a job with ``seed=s`` (default 0) samples with its
own ``torch.Generator`` seeded ``s + i``, so the text depends on the item alone, never on which
items share its batch, and equals ``torch.manual_seed(s + i)`` followed by the item run alone
through ``pipeline(...)`` or ``model.generate(do_sample=True, ...)``. ``generate`` runs with
``do_sample=False`` and the sampling warpers plus :class:`TokenScorer` as logits processors: the
scorer draws each item's tokens from the warped distribution with the item's generator, exactly
as ``generate``'s own ``torch.multinomial`` would for that item alone (its ``num_return_sequences``
rows in one draw), then masks every other token so the greedy step picks it.

**Several sequences** (``num_return_sequences``): every one is stored in ``output.sequences``
(``generated_text``, ``score``, ``n_new_tokens``, ``finish_reason``), ranked by score; the best
is the item's ``generated_text`` and ``score``.

**Stop strings** stop generation as they appear (transformers' ``StopStringCriteria``, what
``generate(stop_strings=...)`` uses) and the text ends before the first one, as OpenAI's ``stop``:
``finish_reason`` ``"stop"``, ``n_new_tokens`` and the score count the fewest new tokens whose text
holds it. A :class:`StopRecorder` notes the step each row stopped at, since in a batch a stopped
row is padded and its padding may be the end-of-sequence token.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, ClassVar, cast

from sluice.errors import ItemError, ValidationError
from sluice.families import generation_alone
from sluice.families.base import Feature, ItemResult
from sluice.families.common import text_field
from sluice.families.generation_options import (
    ALONE_OPTIONS,
    CUSTOM_OPTIONS,
    GENERATE_DEFAULTS,
    MAX_SEED,
    MAX_STOPS,
    NOT_GENERATE,
    RULES,
    SAMPLING_OPTIONS,
    Rule,
    check_options,
    check_strategy,
    item_seed,
)
from sluice.families.generation_scoring import Generated, StopRecorder, TokenScorer, eos_ids, sampling_warpers
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

#: re-exported: families and tests import these from here
__all__ = [
    "ALONE_OPTIONS",
    "CUSTOM_OPTIONS",
    "GENERATE_DEFAULTS",
    "MAX_SEED",
    "MAX_STOPS",
    "NOT_GENERATE",
    "RULES",
    "SAMPLING_OPTIONS",
    "Generated",
    "GenerationFamily",
    "Rule",
    "StopRecorder",
    "TokenScorer",
    "check_options",
    "item_seed",
    "sampling_warpers",
]


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
        check_strategy(cls.own(params), spec, None, "job params", cls.auto_class)

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        cls.check_generation(fields, item, spec, settings)

    @classmethod
    def check_generation(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        """An item's generation options: each one's rule, their combination, and what needs the registry."""
        check_options(fields, cls.options, f"item {item}")
        check_strategy(cls.own(fields), spec, settings, f"item {item}", cls.auto_class)

    @classmethod
    def own(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields that are this family's options (others are not generation options here)."""
        return {k: v for k, v in fields.items() if k in cls.options}

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        config = self.model.generation_config
        # The ids that stop generation (and end an item's tokens) are the generation config's.
        self.eos_ids = set(eos_ids(config.eos_token_id))
        pads = [self.tokenizer.pad_token_id, config.pad_token_id, min(self.eos_ids, default=None),
                self.tokenizer.eos_token_id, 0]  # fmt: skip
        self.pad_id = int(next(p for p in pads if p is not None))
        self.model_defaults = {
            **GENERATE_DEFAULTS,
            **{k: v for k, v in config.to_dict().items() if v is not None and not k.startswith("_")},
        }
        self.assistants: dict[str, tuple[Any, Any]] = {}  # name -> (model, its generation config as loaded)
        self._stop_criteria: dict[tuple[str, ...], Any] = {}
        self._word_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self.custom_generate = generation_alone.prepare_custom_generate(self.spec)
        if self.custom_generate is not None:  # removed with the family too when it is never released
            weakref.finalize(self, generation_alone.discard_custom_generate, self.custom_generate)

    def release(self) -> None:
        generation_alone.discard_custom_generate(getattr(self, "custom_generate", None))
        self.assistants = {}
        super().release()

    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.pad_id, "attention_mask": 0}

    def generate_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The ``generate()`` keyword arguments an item asks for (defaults left to the model);
        ``stop`` becomes ``stop_strings`` (a list), which also keeps items with other stops apart."""
        chosen = {k: fields[k] for k in self.options if k not in NOT_GENERATE and fields.get(k) is not None}
        stop = fields.get("stop") if "stop" in self.options else None
        if stop is not None:
            chosen["stop_strings"] = [stop] if isinstance(stop, str) else list(stop)
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

    def sequences_per_item(self, options: dict[str, Any]) -> int:
        return int(self.effective(options).get("num_return_sequences") or 1)

    def mode(self, options: dict[str, Any]) -> str:
        config = self.effective(options)
        if config["do_sample"]:
            if config["num_beams"] > 1:
                raise ItemError("beam-search sampling (do_sample with num_beams > 1) is not supported")
            return "sample"
        return "beam" if config["num_beams"] > 1 else "greedy"

    def runs_alone(self, options: dict[str, Any]) -> bool:
        """Whether items with these options go through ``generate`` one at a time (see generation_alone)."""
        return self.custom_generate is not None or any(options.get(k) is not None for k in ALONE_OPTIONS)

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
        """One item's row; its length counts prompt and new tokens for every beam or sequence, as memory does."""
        options = self.generate_options(fields)
        ids = self.fit(ids, options)
        mode = self.mode(options)
        self.check_token_ids(options)
        width = max(int(self.effective(options)["num_beams"]), self.sequences_per_item(options))
        seed = item_seed(int(fields.get("seed") or 0), item) if mode == "sample" else None
        length = (len(ids) + self.new_token_limit(options)) * width
        meta = {"options": options, "mode": mode, "seed": seed, "prompt_tokens": len(ids),
                "stop": options.get("stop_strings")}  # fmt: skip
        return Feature(item=item, ids={"input_ids": ids, "attention_mask": [1] * len(ids)}, length=length, meta=meta)

    def check_token_ids(self, options: dict[str, Any]) -> None:
        """Fail an item whose ``bad_words`` or ``suppress_tokens`` are not tokens of this model."""
        size = len(self.tokenizer)
        if options.get("bad_words"):
            self.bad_word_ids(options["bad_words"])
        bad = [t for t in options.get("suppress_tokens") or () if t >= size]
        if bad:
            raise ItemError(f"suppress_tokens {bad} are not token ids of this model (its vocabulary has {size})")

    def bad_word_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word as the token ids it encodes to (without special tokens), as transformers advises."""
        key = tuple(words)
        if key not in self._word_ids:
            ids = self.tokenizer(list(words), add_special_tokens=False)["input_ids"]
            empty = [w for w, i in zip(words, ids, strict=True) if not i]
            if empty:
                raise ItemError(f"bad_words {empty} encode to no tokens")
            self._word_ids[key] = [list(i) for i in ids]
        return self._word_ids[key]

    def stop_criterion(self, stops: list[str]) -> Any:
        """transformers' ``StopStringCriteria`` for ``stops`` (it preprocesses the vocabulary: kept per stop set)."""
        from transformers.generation.stopping_criteria import StopStringCriteria

        key = tuple(stops)
        if key not in self._stop_criteria:
            self._stop_criteria[key] = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(stops))
        return self._stop_criteria[key]

    def call_options(self, options: dict[str, Any], batched: bool) -> dict[str, Any]:
        """``generate()`` keyword arguments for ``options``: bad words as ids; on the batched path without
        what :meth:`generate` handles itself (sampling, stop strings, several sequences)."""
        kwargs = {k: v for k, v in options.items() if k not in ("stop_strings", "bad_words")}
        if batched:
            for name in (*SAMPLING_OPTIONS, "do_sample", "num_return_sequences"):
                kwargs.pop(name, None)
        if options.get("bad_words"):
            kwargs["bad_words_ids"] = self.bad_word_ids(options["bad_words"])
        return kwargs

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        from sluice.families.collate import pad_features

        batch = pad_features(features, self.pad_values(), self.device, side=self.padding_side)
        batch["meta"] = [f.meta for f in features]
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        """Per row, its generated sequences (one :class:`Generated` each), one ``generate`` per option group."""
        meta = batch.pop("meta")
        groups: dict[str, list[int]] = {}
        for row, m in enumerate(meta):
            groups.setdefault(repr(sorted(m["options"].items())), []).append(row)
        out: list[Any] = [None] * len(meta)
        for rows in groups.values():
            first = meta[rows[0]]
            options = first["options"]
            if self.runs_alone(options):
                results = [generation_alone.generate_alone(self, self.rows_of(batch, [r]), options, meta[r]["seed"])
                           for r in rows]  # fmt: skip
            else:
                flat = self.generate(self.rows_of(batch, rows), options, first["mode"], [meta[r]["seed"] for r in rows])
                per = len(flat) // len(rows)
                results = [flat[n * per : (n + 1) * per] for n in range(len(rows))]
            for row, result in zip(rows, results, strict=True):
                out[row] = result
        return out

    def rows_of(self, batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
        """Those rows of a padded batch, without the columns that are padding in every one of them."""
        import torch

        pick = torch.tensor(rows, device=batch["input_ids"].device)
        inputs = {k: v.index_select(0, pick) for k, v in batch.items()}
        used = inputs["attention_mask"].bool().any(0)
        return {k: v[:, used] for k, v in inputs.items()}

    def generate(self, inputs: dict[str, Any], options: dict[str, Any], mode: str,
                 seeds: list[int | None]) -> list[Generated]:  # fmt: skip
        """Every row's sequences (``num_return_sequences`` consecutive ones per row), with their scores."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        config = self.effective(options)
        per = self.sequences_per_item(options)
        kwargs = self.call_options(options, batched=True)
        if mode == "sample" and per > 1:  # what generate() does for num_return_sequences, done here
            inputs = {k: v.repeat_interleave(per, dim=0) for k, v in inputs.items()}
        # Beam search picks among each row's best max(2, 1 + #eos) * num_beams candidates; keep a few more.
        keep = (2 + len(self.eos_ids)) * int(config["num_beams"])
        # Sampling rows always carry a seed (item_seed); the other modes take none.
        sampled = cast(list[int], seeds) if mode == "sample" else None
        scorer = TokenScorer(mode, self.device, seeds=sampled, keep=keep, per=per)
        processors = [*sampling_warpers(config, self.device), scorer] if mode == "sample" else [scorer]
        stops, recorder = options.get("stop_strings"), None
        if stops and mode == "beam":  # beam search checks its candidates, not rows: let generate() stop them
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        elif stops:
            recorder = StopRecorder(self.stop_criterion(stops))
        # Only beam search needs the output object (for beam_indices); a plain tensor lets generate()
        # defer its stop checks instead of syncing with the GPU at every step.
        out, start = self.call_generate(
            inputs, **kwargs, do_sample=False, pad_token_id=self.pad_id,
            num_return_sequences=per if mode == "beam" else 1, logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([recorder] if recorder else []),
            return_dict_in_generate=mode == "beam",
        )  # fmt: skip
        sequences = out.sequences if mode == "beam" else out
        new = sequences[:, start:]
        logprobs = scorer.transition_logprobs(new, out.beam_indices if mode == "beam" else None)
        stopped = recorder.stopped_at() if recorder else []
        stopped += [None] * (new.shape[0] - len(stopped))
        return [Generated(ids, lps, at) for ids, lps, at in
                zip(new.tolist(), logprobs.float().cpu().tolist(), stopped, strict=True)]  # fmt: skip

    def call_generate(self, inputs: dict[str, Any], **kwargs: Any) -> tuple[Any, int]:
        """``model.generate(**inputs, **kwargs)`` and where the new tokens start in its sequences.

        Families whose model's ``generate`` builds its own inputs (BLIP: it sets ``pad_token_id``
        itself and returns the prompt without its last token) override this.
        """
        out = self.model.generate(**inputs, **kwargs)
        return out, 1 if self.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [self.item_result(f, out) for f, out in zip(features, outputs, strict=True)]

    def item_result(self, feature: Feature, output: Any) -> ItemResult:
        """An item's result from its sequences (a list of :class:`Generated`, or one ``(ids, logprobs)``)."""
        candidates = [Generated(*c) for c in (output if isinstance(output, list) else [output])]
        results = [self.result_for(feature, c.ids, c.logprobs, c.stopped_at) for c in candidates]
        return results[0] if len(results) == 1 else self.ranked(feature, results)

    def ranked(self, feature: Feature, results: list[ItemResult]) -> ItemResult:
        """Several sequences of one item: the best (highest score; ties keep generate's order) with all of them."""
        order = sorted(results, key=lambda r: -r.score if r.score is not None else math.inf)
        best = dict(order[0].output or {})
        keys = ("generated_text", "n_new_tokens", "finish_reason")
        best["sequences"] = [{k: (r.output or {}).get(k) for k in keys} | {"score": r.score} for r in order]
        new_tokens = sum(int((r.output or {}).get("n_new_tokens") or 0) for r in order)
        return ItemResult(item=feature.item, score=order[0].score, output=best,
                          n_tokens=feature.meta["prompt_tokens"] + new_tokens)  # fmt: skip

    def result_for(self, feature: Feature, ids: list[int], logprobs: list[float],
                   stopped_at: int | None = None) -> ItemResult:  # fmt: skip
        """One sequence's result: its new tokens up to and including the first end-of-sequence token,
        or up to the stop string that ended it, the text then ending before the stop string."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if stopped_at is not None and (end is None or stopped_at <= end):
            n, reason = stopped_at, "stop"
        else:
            n, reason = (len(ids), "length") if end is None else (end + 1, "eos")
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        stops = feature.meta.get("stop") or []
        found = [text.find(s) for s in stops if s in text]
        if found:
            return self.finished(feature, text[: min(found)], self.tokens_to_stop(ids[:n], stops), logprobs, "stop")
        return self.finished(feature, text, n, logprobs, reason)

    def tokens_to_stop(self, ids: list[int], stops: list[str]) -> int:
        """The fewest of ``ids`` whose text holds a stop string (holding one only grows with more tokens)."""
        low, high = 1, len(ids)
        while low < high:
            mid = (low + high) // 2
            head = self.tokenizer.decode(ids[:mid], skip_special_tokens=True)
            low, high = (low, mid) if any(s in head for s in stops) else (mid + 1, high)
        return low

    def finished(self, feature: Feature, text: str, n: int, logprobs: list[float], reason: str) -> ItemResult:
        """The stored result of ``n`` new tokens decoding to ``text``; score = their mean log-probability."""
        mean = sum(logprobs[:n]) / n if n else math.nan
        output = {"generated_text": text, "n_new_tokens": n, "finish_reason": reason}
        return ItemResult(item=feature.item, score=mean if math.isfinite(mean) else None, output=self.output(output),
                          n_tokens=feature.meta["prompt_tokens"] + n)  # fmt: skip

    def output(self, output: dict[str, Any]) -> dict[str, Any]:
        """Subclasses add the field names their pipelines used."""
        return output
