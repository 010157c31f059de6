"""``text-classification``: ``AutoModelForSequenceClassification`` with the pipeline's score maths.

The score function follows ``transformers.pipeline("text-classification")``: sigmoid for
multi-label models or a single logit, none for regression, softmax otherwise. Items may carry a
``text_pair`` for sentence-pair models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.errors import ValidationError
from sluice.registry import ModelSpec
from sluice.families.base import Feature, ItemResult, text_field
from sluice.families.hf import HFTextFamily


def score_function(problem_type: str | None, num_labels: int) -> str:
    """Which function turns logits into scores, exactly as the pipeline chooses it."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_score_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def model_labels(spec: ModelSpec, config: Any) -> list[str]:
    """Output labels: the registry's ``labels`` when given, else the model config's ``id2label``."""
    labels = list(spec.labels or [config.id2label[i] for i in range(config.num_labels)])
    if len(labels) != config.num_labels:
        raise ValidationError(
            f"registry model {spec.name!r} names {len(labels)} labels but the model has {config.num_labels} outputs"
        )
    return labels


def ranked(labels: list[str], scores: np.ndarray) -> list[dict[str, Any]]:
    """Labels with scores, best first (ties keep label order, as a stable sort does)."""
    order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


class TextClassification(HFTextFamily):
    task = "text-classification"
    auto_class = "AutoModelForSequenceClassification"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec) -> None:
        text_field(fields, "text", item)
        text_field(fields, "text_pair", item, required=False)

    def setup(self) -> None:
        super().setup()
        self.labels = model_labels(self.spec, self.model.config)
        self.function = score_function(self.model.config.problem_type, self.model.config.num_labels)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**self.model_inputs(batch)).logits.float().cpu().numpy()

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
