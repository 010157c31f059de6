"""``feature-extraction``: one pooled embedding per item, as sentence-transformers computes it.

Pooling and normalisation are :class:`sluice.families.hf.Embedder`'s: mean pooling under the
attention mask or the first token (``pooling = "cls"``), L2-normalised when ``normalize``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.hf import Embedder


class FeatureExtraction(Embedder):
    task = "feature-extraction"

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [
            ItemResult(item=f.item, embedding=np.asarray(row, dtype=np.float32), n_tokens=f.length)
            for f, row in zip(features, outputs, strict=True)
        ]
