"""``image-classification``: ``AutoModelForImageClassification`` with the pipeline's score maths.

Scores follow ``transformers.pipeline("image-classification")`` (softmax, or sigmoid for
multi-label models and a single logit, none for regression); ``output.scores`` holds the best
``top_k`` labels (default 5, as the pipeline), ``label``/``score`` the best one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, int_option, model_labels, ranked, score_function
from sluice.families.images import HFImageFamily, validate_image
from sluice.registry import ModelSpec
from sluice.settings import Settings

DEFAULT_TOP_K = 5


def top_k(fields: dict[str, Any], where: str) -> int:
    """How many of the best labels to keep (default 5)."""
    return int(int_option(fields, "top_k", where, DEFAULT_TOP_K, 1))


class ImageClassification(HFImageFamily):
    task = "image-classification"
    auto_class = "AutoModelForImageClassification"

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        top_k(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)
        top_k(fields, f"item {item}")

    def setup(self) -> None:
        super().setup()
        self.labels = model_labels(self.spec, self.model.config)
        self.function = score_function(self.model.config.problem_type, self.model.config.num_labels)

    def item_meta(self, item: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {"top_k": top_k(fields, f"item {item}")}

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**batch).logits.float().cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        scores = apply_score_function(np.asarray(outputs, dtype=np.float32), self.function)
        results = []
        for feature, row in zip(features, scores, strict=True):
            best = ranked(self.labels, row)[: feature.meta["top_k"]]
            results.append(
                ItemResult(
                    item=feature.item,
                    label=best[0]["label"],
                    score=best[0]["score"],
                    output={"scores": best},
                    n_tokens=feature.length,
                )
            )
        return results
