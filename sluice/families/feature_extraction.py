"""``feature-extraction``: one pooled embedding per item, as sentence-transformers computes it.

Pooling and normalisation are :class:`sluice.families.hf.Embedder`'s: mean pooling under the
attention mask or the first token (``pooling = "cls"``), L2-normalised when ``normalize``.
Encoder-decoder checkpoints (T5, mT5, UMT5) load their encoder alone (``AutoModelForTextEncoding``)
and pool its ``last_hidden_state`` the same way.

An item is ``{"text": ...}`` (one embedding) or ``{"texts": [...]}`` (one embedding per text,
stored as one ``(n, dim)`` float32 matrix with ``output["n_texts"] = n``). ``texts`` exists so that
one request that embeds several texts (an OpenAI ``/v1/embeddings`` body whose ``input`` is a
list) stays one item: it succeeds or fails as a whole, counts once, and keeps its key. Each text
is still its own feature, so the texts are length-sorted and batched with every other item's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.errors import ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import text_field
from sluice.families.hf import Embedder, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

#: Most texts one ``texts`` item may hold (OpenAI's limit for one embeddings request's input list).
MAX_TEXTS = 2048


def texts_field(fields: dict[str, Any], item: int, max_chars: int) -> list[str]:
    """An item's ``texts``: 1..MAX_TEXTS strings, each within ``max_chars``; a message naming the item otherwise."""
    texts = fields["texts"]
    if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS:
        raise ValidationError(f"item {item}: field 'texts' must be a list of 1 to {MAX_TEXTS} strings")
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationError(f"item {item}: field 'texts'[{n}] must be a string, got {type(text).__name__}")
        if len(text) > max_chars:
            raise ValidationError(
                f"item {item}: field 'texts'[{n}] has {len(text):,} characters, over the limit of {max_chars:,}; "
                "split the document or raise SLUICE_MAX_ITEM_CHARS"
            )
    return texts


class FeatureExtraction(Embedder):
    task = "feature-extraction"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        if "texts" not in fields:
            text_field(fields, "text", item)
            return
        if fields.get("text") is not None:
            raise ValidationError(f"item {item}: give either 'text' or 'texts', not both")
        texts_field(fields, item, settings.max_item_chars)

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """``text`` items as every text family does; ``texts`` items one feature per text, tokenised together."""
        if not any("texts" in fields for _, fields in items):
            return super().preprocess_many(items)
        return self.batched(items, self._features_of_texts)

    def _features_of_texts(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One tokenizer call over every text of every item; an item's features keep its texts' order."""
        texts = [t for _, fields in items for t in fields.get("texts", [fields.get("text", "")])]
        enc = self.encode([str(t) for t in texts])
        out: Prepared = []
        row = 0
        for item, fields in items:
            features = []
            for _ in fields.get("texts", [None]):
                ids = {name: values[row] for name, values in enc.items()}
                features.append(Feature(item=item, ids=ids, length=len(ids["input_ids"])))
                row += 1
            out.append(features)
        return out

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [
            ItemResult(item=f.item, embedding=np.asarray(row, dtype=np.float32), n_tokens=f.length)
            for f, row in zip(features, outputs, strict=True)
        ]

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        """A ``texts`` item's embeddings stacked in text order, its tokens summed; a ``text`` item as it is."""
        if "texts" not in fields:
            return super().combine(item, fields, partials)
        matrix = np.stack([p.embedding for p in partials]).astype(np.float32)
        tokens = sum(int(p.n_tokens or 0) for p in partials)
        return ItemResult(item=item, embedding=matrix, n_tokens=tokens, output={"n_texts": len(partials)})
