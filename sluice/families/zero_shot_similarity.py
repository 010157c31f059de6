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
from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, candidate_labels, ranked, text_field
from sluice.families.hf import Embedder, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings


class ZeroShotSimilarity(Embedder):
    task = "zero-shot-similarity"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
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
        return np.asarray(matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12))

    def _rows(self, texts: list[str]) -> list[dict[str, list[int]]]:
        enc = self.encode(texts)
        return [{name: enc[name][i] for name in enc} for i in range(len(texts))]

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """The documents' features, each carrying its item's candidate labels (bad labels fail the item)."""
        out = super().preprocess_many(items)
        for pos, (item, fields) in enumerate(items):
            entry = out[pos]
            if not isinstance(entry, list):
                continue
            try:
                labels = tuple(candidate_labels(fields, item))
            except ValidationError as exc:
                out[pos] = ItemResult(item=item, error=str(exc))
                continue
            for feature in entry:
                feature.meta["labels"] = labels
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
