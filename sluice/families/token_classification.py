"""``token-classification`` (NER): ``AutoModelForTokenClassification`` with the pipeline's aggregation.

Per item the stored ``output`` is ``{"entities": [...]}``, each entity ``{"entity_group", "score",
"word", "start", "end"}`` (``"entity"`` instead of ``"entity_group"`` under strategy ``none``, and
no per-window token ``index``); ``label``/``score`` are the best-scoring entity's (None when no
entity survives ``ignore_labels``).

The maths is ``transformers.pipeline("token-classification")``'s, ported here because the
pipeline keeps it in instance methods: softmax per token, ``gather_pre_entities`` (subword
detection from offsets), ``aggregate`` with strategies ``none``/``simple``/``first``/``average``/
``max``, the ``ignore_labels`` filter (default ``["O"]``), and ``aggregate_overlapping_entities``.

Long documents are never truncated: the fast tokenizer splits them into windows of ``max_length``
tokens overlapping by ``stride`` tokens (registry option ``stride``, default ``max_length // 4``),
one :class:`Feature` per window, and :meth:`TokenClassification.combine` merges the windows as the
pipeline does when given ``stride``: entities of every window, then overlapping ones resolved in
favour of the longer (then the higher-scoring) span. The pipeline refuses ``stride`` with an
explicit ``aggregation_strategy="none"``; here ``none`` gets the same window merge, which is what
the pipeline computes when ``stride`` is given and the strategy is left at its default (``none``).

Params, per job or per item: ``aggregation_strategy`` (default ``"simple"``) and ``ignore_labels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.errors import ConfigError, ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, model_labels, text_field
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

STRATEGIES = ("none", "simple", "first", "average", "max")
#: strategies that force one label per word, so they need to know where words start
WORD_STRATEGIES = frozenset({"first", "average", "max"})
DEFAULT_STRATEGY = "simple"
DEFAULT_IGNORE = ("O",)


def aggregation_strategy(fields: dict[str, Any], where: str) -> str:
    """The item's strategy, lower-cased (the pipeline accepts any case), or a message saying what is allowed."""
    value = fields.get("aggregation_strategy", DEFAULT_STRATEGY)
    if not isinstance(value, str) or value.lower() not in STRATEGIES:
        raise ValidationError(f"{where}: 'aggregation_strategy' must be one of {', '.join(STRATEGIES)}; got {value!r}")
    return value.lower()


def ignore_labels(fields: dict[str, Any], where: str) -> frozenset[str]:
    """Labels whose entities are dropped (default ``["O"]``)."""
    value = fields.get("ignore_labels", list(DEFAULT_IGNORE))
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValidationError(f"{where}: 'ignore_labels' must be a list of label names like [\"O\"]; got {value!r}")
    return frozenset(value)


def get_tag(entity_name: str) -> tuple[str, str]:
    """``B-PER`` → ``("B", "PER")``; a label without a B-/I- prefix counts as a continuation."""
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    return "I", entity_name


def aggregate_overlapping_entities(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of entities whose spans overlap (windows share ``stride`` tokens), keep the longer, then the higher-scoring."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    aggregated = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            current_length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if current_length > previous_length or (
                current_length == previous_length and entity["score"] > previous["score"]
            ):
                previous = entity
        else:
            aggregated.append(previous)
            previous = entity
    aggregated.append(previous)
    return aggregated


class TokenClassification(HFTextFamily):
    task = "token-classification"
    auto_class = "AutoModelForTokenClassification"

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        aggregation_strategy(params, "job params")
        ignore_labels(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        aggregation_strategy(fields, f"item {item}")
        ignore_labels(fields, f"item {item}")

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        if not self.tokenizer.is_fast:
            raise ConfigError(
                f"registry model {self.spec.name!r}: token-classification needs a fast tokenizer (tokenizer.json) "
                "for character offsets, word boundaries and stride windows"
            )
        self.labels = model_labels(self.spec, self.model.config)
        self.stride = self._resolve_stride()
        # WordPiece/BPE models that mark continuations ("##") tell subwords apart exactly; others need a heuristic.
        self.word_aware = bool(getattr(self.tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None))

    def _resolve_stride(self) -> int:
        stride = self.spec.options.get("stride", self.max_length // 4)
        room = self.max_length - self.tokenizer.num_special_tokens_to_add()
        if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride < room:
            raise ConfigError(
                f"registry model {self.spec.name!r}: 'stride' must be an integer from 0 to {room - 1} "
                f"(windows hold {room} text tokens at max_length {self.max_length}); got {stride!r}"
            )
        return stride

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One feature per window of ``max_length`` tokens, windows overlapping by ``stride`` tokens."""
        return self.batched(items, self._windows)

    def _windows(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """The windows of every item's ``text``, from one tokenizer call."""
        enc = self.tokenizer(
            [str(fields.get("text", "")) for _, fields in items],
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        names = [name for name in self.tokenizer.model_input_names if name in enc]
        windows: list[list[Feature]] = [[] for _ in items]
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            ids = {name: enc[name][row] for name in names}
            meta = {"offsets": enc["offset_mapping"][row], "special": enc["special_tokens_mask"][row]}
            windows[sample].append(Feature(item=items[sample][0], ids=ids, length=len(ids["input_ids"]), meta=meta))
        return windows  # type: ignore[return-value]

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**self.model_inputs(batch)).logits.float().cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[dict[str, Any]]:
        """Per window: token probabilities with what ``combine`` needs to turn them into entities."""
        return [
            {
                "scores": apply_score_function(np.asarray(logits[: f.length], dtype=np.float32), "softmax"),
                "input_ids": f.ids["input_ids"],
                "offsets": f.meta["offsets"],
                "special": f.meta["special"],
            }
            for f, logits in zip(features, outputs, strict=True)
        ]

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        where = f"item {item}"
        strategy = aggregation_strategy(fields, where)
        ignored = ignore_labels(fields, where)
        text = str(fields.get("text", ""))
        entities: list[dict[str, Any]] = []
        for window in partials:
            grouped = self.aggregate(self.gather_pre_entities(text, window), strategy)
            entities.extend(e for e in grouped if e.get("entity", e.get("entity_group")) not in ignored)
        if len(partials) > 1:
            entities = aggregate_overlapping_entities(entities)
        key = "entity" if strategy == "none" else "entity_group"
        stored = [
            {key: e[key], "score": float(e["score"]), "word": e["word"], "start": int(e["start"]), "end": int(e["end"])}
            for e in entities
        ]
        best = max(stored, key=lambda e: e["score"], default=None)
        return ItemResult(
            item=item,
            label=None if best is None else best[key],
            score=None if best is None else best["score"],
            output={"entities": stored},
            n_tokens=sum(len(w["input_ids"]) for w in partials),
        )

    # the pipeline's aggregation ----------------------------------------------------------
    def gather_pre_entities(self, sentence: str, window: dict[str, Any]) -> list[dict[str, Any]]:
        """One entry per non-special token: its word piece, scores, character span and whether it continues a word."""
        tokens = self.tokenizer.convert_ids_to_tokens(window["input_ids"])
        pre_entities = []
        for idx, token_scores in enumerate(window["scores"]):
            if window["special"][idx]:
                continue
            word = tokens[idx]
            start, end = window["offsets"][idx]
            word_ref = sentence[start:end]
            if self.word_aware:
                is_subword = len(word) != len(word_ref)
            else:
                # The pipeline's fallback for tokenizers without a continuation marker.
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if window["input_ids"][idx] == self.tokenizer.unk_token_id:
                word = word_ref
                is_subword = False
            pre_entities.append(
                {
                    "word": word,
                    "scores": token_scores,
                    "start": start,
                    "end": end,
                    "index": idx,
                    "is_subword": is_subword,
                }
            )
        return pre_entities

    def aggregate(self, pre_entities: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        if strategy in {"none", "simple"}:
            entities = []
            for pre in pre_entities:
                idx = int(pre["scores"].argmax())
                span = {key: pre[key] for key in ("index", "word", "start", "end")}
                entities.append({"entity": self.labels[idx], "score": pre["scores"][idx], **span})
        else:
            entities = self.aggregate_words(pre_entities, strategy)
        if strategy == "none":
            return entities
        return self.group_entities(entities)

    def aggregate_word(self, entities: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        word = self.tokenizer.convert_tokens_to_string([e["word"] for e in entities])
        if strategy == "first":
            scores = entities[0]["scores"]
        elif strategy == "max":
            scores = max(entities, key=lambda e: e["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([e["scores"] for e in entities]), axis=0)
        idx = int(scores.argmax())
        return {
            "entity": self.labels[idx],
            "score": scores[idx],
            "word": word,
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def aggregate_words(self, entities: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        """Give every word one label: its tokens are merged by ``strategy`` before grouping."""
        word_entities = []
        group: list[dict[str, Any]] = []
        for entity in entities:
            if group and not entity["is_subword"]:
                word_entities.append(self.aggregate_word(group, strategy))
                group = []
            group.append(entity)
        if group:
            word_entities.append(self.aggregate_word(group, strategy))
        return word_entities

    def group_sub_entities(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([e["score"] for e in entities])),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Merge adjacent tokens (or words) of one tag; a ``B-`` label always starts a new entity."""
        groups = []
        current: list[dict[str, Any]] = []
        for entity in entities:
            if current:
                bi, tag = get_tag(entity["entity"])
                _, last_tag = get_tag(current[-1]["entity"])
                if not (tag == last_tag and bi != "B"):
                    groups.append(self.group_sub_entities(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self.group_sub_entities(current))
        return groups
