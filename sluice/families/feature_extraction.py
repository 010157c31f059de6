"""``feature-extraction``: one pooled embedding per item, as sentence-transformers computes it.

Mean pooling averages token states under the attention mask; ``cls`` takes the first token;
``normalize`` L2-normalises, which is what all-MiniLM-L6-v2's ``Normalize`` module does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Feature, ItemResult
from sluice.families.hf import HFTextFamily


class FeatureExtraction(HFTextFamily):
    task = "feature-extraction"
    auto_class = "AutoModel"

    def embed(self, batch: dict[str, Any]) -> Any:
        """Pooled (and optionally normalised) float32 embeddings for a collated batch."""
        import torch

        hidden = self.model(**self.model_inputs(batch)).last_hidden_state.float()
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.embed(batch).cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        return [
            ItemResult(item=f.item, embedding=np.asarray(row, dtype=np.float32), n_tokens=f.length)
            for f, row in zip(features, outputs, strict=True)
        ]
