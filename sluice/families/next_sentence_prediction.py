"""``next-sentence-prediction``: does ``text_pair`` follow ``text``? (``AutoModelForNextSentencePrediction``, BERT)

An item is ``{"text": ..., "text_pair": ...}``, encoded as the sentence pair BERT was pre-trained
on (``[CLS] text [SEP] text_pair [SEP]``, truncated longest-first to the model's limit). BERT's
head gives two logits; by its convention (the ``labels`` of ``BertForNextSentencePrediction``)
index 0 means ``text_pair`` continues ``text`` and index 1 that it is a random sentence.

Stored: ``label`` ``is_next`` or ``not_next`` (the likelier), and ``score`` = P(is next), the
softmax of index 0, whichever label wins: one number to threshold across items. Both
probabilities are in ``output["scores"]``, ranked. The oracle is the model's softmax, item alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, ranked, text_field
from sluice.families.hf import HFTextFamily
from sluice.registry import ModelSpec
from sluice.settings import Settings

#: label per logit index, in BERT's convention (0: the pair continues)
LABELS = ["is_next", "not_next"]


class NextSentencePrediction(HFTextFamily):
    task = "next-sentence-prediction"
    auto_class = "AutoModelForNextSentencePrediction"
    text_fields = ("text", "text_pair")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        text_field(fields, "text_pair", item)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**self.model_inputs(batch)).logits.float().cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        scores = apply_score_function(np.asarray(outputs, dtype=np.float32), "softmax")
        return [
            ItemResult(
                item=feature.item,
                label=LABELS[int(row.argmax())],
                score=float(row[0]),
                output={"scores": ranked(LABELS, row)},
                n_tokens=feature.length,
            )
            for feature, row in zip(features, scores, strict=True)
        ]
