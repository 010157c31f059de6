"""``fill-mask``: ``AutoModelForMaskedLM`` with ``transformers.pipeline("fill-mask")``'s outputs.

Per item the stored ``output`` is ``{"predictions": [{"score", "token", "token_str", "sequence"}, ...]}``,
the ``top_k`` (default 5) most probable tokens for the mask, best first; ``label``/``score`` are the
best one's ``token_str`` and probability. ``targets`` (a list of strings) limits the candidates as
the pipeline does: a target in the vocabulary is that token, any other is its first sub-token
(targets that tokenise to nothing are dropped), duplicates count once, and ``top_k`` is capped
at the number of distinct targets.

Several masks in one text: like the pipeline, ``predictions`` is then a list with one ranking
per mask, in text order, each mask scored on its own (not jointly), and each ``sequence`` keeps
the special tokens so the other masks stay visible; ``label``/``score`` come from the first mask.

Submit-time validation checks that the text contains the registry entry's ``mask_token``
(default ``"[MASK]"``) without loading anything; at load time the tokenizer must agree with it.
A text longer than ``max_length`` is truncated; an item whose masks all fall past the cut fails.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sluice.errors import ConfigError, ItemError, ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import int_option, text_field
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

DEFAULT_TOP_K = 5
DEFAULT_MASK_TOKEN = "[MASK]"


def mask_token(spec: ModelSpec) -> str:
    """The mask token texts must contain: the registry's ``mask_token``, default ``[MASK]``."""
    return str(spec.options.get("mask_token", DEFAULT_MASK_TOKEN))


def top_k(fields: dict[str, Any], where: str) -> int:
    """How many tokens to rank per mask (default 5)."""
    return int(int_option(fields, "top_k", where, DEFAULT_TOP_K, 1))


def targets(fields: dict[str, Any], where: str) -> tuple[str, ...] | None:
    """The candidate tokens, or None for the whole vocabulary; a single string is one target, as in the pipeline."""
    value = fields.get("targets")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        raise ValidationError(f"{where}: 'targets' must be a non-empty list of non-empty strings; got {value!r}")
    return tuple(value)


class FillMask(HFTextFamily):
    task = "fill-mask"
    auto_class = "AutoModelForMaskedLM"

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        top_k(params, "job params")
        targets(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text = text_field(fields, "text", item)
        token = mask_token(spec)
        if token not in text:  # type: ignore[operator]
            raise ValidationError(
                f"item {item}: field 'text' has no mask token {token!r}; "
                f"put {token} where the missing word goes (model {spec.name!r} uses {token!r})"
            )
        top_k(fields, f"item {item}")
        targets(fields, f"item {item}")

    # run time ----------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        expected = mask_token(self.spec)
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"registry model {self.spec.name!r}: the tokenizer defines no mask token")
        if self.tokenizer.mask_token != expected:
            raise ConfigError(
                f"registry model {self.spec.name!r}: its tokenizer's mask token is {self.tokenizer.mask_token!r} "
                f"but the registry says {expected!r}; set mask_token = {self.tokenizer.mask_token!r} there"
            )
        self.target_ids = lru_cache(maxsize=256)(self._target_ids)

    def _target_ids(self, names: tuple[str, ...]) -> np.ndarray:
        """Token ids for target strings, exactly as the pipeline's ``get_target_ids`` picks them."""
        vocab = self.tokenizer.get_vocab()
        ids = []
        for name in names:
            id_ = vocab.get(name)
            if id_ is None:
                pieces = self.tokenizer(
                    name, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                    max_length=1, truncation=True,
                )["input_ids"]  # fmt: skip
                if not pieces:
                    continue
                id_ = pieces[0]
            ids.append(id_)
        ids = list(set(ids))
        if not ids:
            raise ItemError(f"none of the targets {list(names)} maps to a token of this model's vocabulary")
        return np.array(ids)

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """Tokenised texts; an item whose masks were all cut off by truncation fails alone."""
        out = super().preprocess_many(items)
        mask_id = self.tokenizer.mask_token_id
        for i, entry in enumerate(out):
            if isinstance(entry, list) and not any(t == mask_id for f in entry for t in f.ids["input_ids"]):
                out[i] = ItemResult(
                    item=items[i][0],
                    error=f"no {self.tokenizer.mask_token} left in the text after truncation to "
                    f"{self.max_length} tokens; put the mask earlier or shorten the text",
                )
        return out

    def forward(self, batch: dict[str, Any]) -> Any:
        """Probabilities over the vocabulary at every mask position, rows in batch order."""
        logits = self.model(**self.model_inputs(batch)).logits
        masked = batch["input_ids"] == self.tokenizer.mask_token_id
        return logits[masked].float().softmax(dim=-1).cpu()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[dict[str, Any]]:
        """Per feature: its input ids and the probability rows of its masks (ranked in ``combine``)."""
        mask_id = self.tokenizer.mask_token_id
        parts = []
        row = 0
        for feature in features:
            n_masks = sum(1 for t in feature.ids["input_ids"] if t == mask_id)
            parts.append({"input_ids": feature.ids["input_ids"], "probs": outputs[row : row + n_masks]})
            row += n_masks
        return parts

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        """The pipeline's ``postprocess`` for one text: top-k tokens per mask and the filled-in sequences."""
        (part,) = partials
        where = f"item {item}"
        k = top_k(fields, where)
        names = targets(fields, where)
        probs = part["probs"]
        target_ids = None if names is None else self.target_ids(names)
        if target_ids is not None:
            probs = probs[..., target_ids]
            k = min(k, len(target_ids))
        if k > probs.shape[-1]:
            raise ItemError(f"'top_k' is {k} but the model's vocabulary has only {probs.shape[-1]} tokens")
        values, predictions = probs.topk(k)
        input_ids = np.asarray(part["input_ids"])
        masked_index = np.flatnonzero(input_ids == self.tokenizer.mask_token_id)
        single_mask = len(masked_index) == 1
        rankings = []
        for i, (row_values, row_predictions) in enumerate(zip(values.tolist(), predictions.tolist(), strict=True)):
            ranking = []
            for v, p in zip(row_values, row_predictions, strict=True):
                if target_ids is not None:
                    p = int(target_ids[p])
                tokens = input_ids.copy()
                tokens[masked_index[i]] = p
                tokens = tokens[tokens != self.tokenizer.pad_token_id]
                ranking.append({
                    "score": v,
                    "token": p,
                    "token_str": self.tokenizer.decode([p]),
                    "sequence": self.tokenizer.decode(tokens, skip_special_tokens=single_mask),
                })  # fmt: skip
            rankings.append(ranking)
        top = rankings[0][0]
        return ItemResult(
            item=item,
            label=top["token_str"],
            score=top["score"],
            output={"predictions": rankings[0] if single_mask else rankings},
            n_tokens=len(input_ids),
        )
