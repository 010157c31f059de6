"""``text-classification``: ``AutoModelForSequenceClassification`` with the pipeline's score maths.

The score function follows ``transformers.pipeline("text-classification")``: sigmoid for
multi-label models or a single logit, none for regression, softmax otherwise
(:func:`sluice.families.common.score_function`). Items may carry a ``text_pair`` for
sentence-pair models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, ranked, text_field
from sluice.families.hf import SequenceClassifier
from sluice.registry import ModelSpec
from sluice.settings import Settings


class TextClassification(SequenceClassifier):
    task = "text-classification"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        text_field(fields, "text_pair", item, required=False)

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        scores = apply_score_function(np.asarray(outputs, dtype=np.float32), self.function)
        results = []
        for feature, row in zip(features, scores, strict=True):
            best = int(row.argmax())
            results.append(
                ItemResult(
                    item=feature.item,
                    label=self.labels[best],
                    score=float(row[best]),
                    output={"scores": ranked(self.labels, row)},
                    n_tokens=feature.length,
                )
            )
        return results
