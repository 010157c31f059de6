"""``zero-shot-similarity``: classify documents by embedding similarity to candidate labels.

Each document and each candidate label is embedded with the registered encoder (pooling and
normalisation as for ``feature-extraction``); scores are ``softmax(cos / temperature)`` over the
labels. ``temperature`` comes from the registry entry (default 0.05, i.e. scale 20, the scale
sentence-transformers trains its contrastive models with), so scores are spread, not near-uniform.
Candidate labels come with the job (``--param candidate_labels=[...]``) or with each item.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sluice.errors import ValidationError
from sluice.registry import ModelSpec
from sluice.families.base import Feature, ItemResult, text_field
from sluice.families.feature_extraction import FeatureExtraction
from sluice.families.text_classification import apply_score_function, ranked


def candidate_labels(fields: dict[str, Any], item: int) -> list[str]:
    labels = fields.get("candidate_labels")
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",") if part.strip()]
    if not labels or not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ValidationError(
            f"item {item}: 'candidate_labels' must be a non-empty list of strings; "
            'give it for the job with --param \'candidate_labels=["a","b"]\' or per item'
        )
    if len(set(labels)) != len(labels):
        raise ValidationError(f"item {item}: 'candidate_labels' has duplicates: {labels}")
    return labels


class ZeroShotSimilarity(FeatureExtraction):
    task = "zero-shot-similarity"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec) -> None:
        text_field(fields, "text", item)
        candidate_labels(fields, item)

    def setup(self) -> None:
        super().setup()
        self.temperature = float(self.spec.options.get("temperature", 0.05))
        self._label_matrix = lru_cache(maxsize=256)(self._embed_labels)

    def _embed_labels(self, labels: tuple[str, ...]) -> np.ndarray:
        import torch

        batch = self.collate([Feature(item=i, ids=ids, length=0) for i, ids in enumerate(self._rows(list(labels)))])
        with torch.inference_mode():
            matrix = self.embed(batch).cpu().numpy()
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def _rows(self, texts: list[str]) -> list[dict[str, list[int]]]:
        enc = self.encode(texts)
        return [{name: enc[name][i] for name in enc} for i in range(len(texts))]

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        out = super().preprocess_many(items)
        for entry, (_, fields) in zip(out, items, strict=True):
            if isinstance(entry, list):
                for feature in entry:
                    feature.meta["labels"] = tuple(candidate_labels(fields, feature.item))
        return out

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        results = []
        for feature, doc in zip(features, outputs, strict=True):
            labels = feature.meta["labels"]
            doc = doc / max(float(np.linalg.norm(doc)), 1e-12)
            sims = self._label_matrix(labels) @ doc
            scores = apply_score_function(sims / self.temperature, "softmax")
            best = int(scores.argmax())
            results.append(
                ItemResult(
                    item=feature.item,
                    label=labels[best],
                    score=float(scores[best]),
                    output={
                        "scores": ranked(list(labels), scores),
                        "similarities": dict(zip(labels, map(float, sims), strict=True)),
                    },
                    n_tokens=feature.length,
                )
            )
        return results
