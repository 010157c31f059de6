"""``image-segmentation``: ``AutoModelForSemanticSegmentation`` (SegFormer, DPT, BEiT, ...) to masks.

As ``pipeline("image-segmentation", subtask="semantic")``: the image processor's
``post_process_semantic_segmentation`` resizes the logits to the input's size and takes the best
label per pixel; every label present gets a mask, a PNG artifact named by the label (255 where
the label won, 0 elsewhere), in label-id order as the pipeline lists them. ``output.labels``
holds the same labels in the same order with their ``share`` of the pixels; ``label`` and
``score`` are the label with the largest share, and that share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Artifact, Feature, ItemResult
from sluice.families.common import model_labels
from sluice.families.images import HFImageFamily, png_bytes

PNG = "image/png"


class ImageSegmentation(HFImageFamily):
    task = "image-segmentation"
    auto_class = "AutoModelForSemanticSegmentation"

    def setup(self) -> None:
        super().setup()
        self.labels = model_labels(self.spec, self.model.config)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**batch).logits.float()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        from transformers.modeling_outputs import SemanticSegmenterOutput

        sizes = [f.meta["image_size"] for f in features]
        maps = self.image_processor.post_process_semantic_segmentation(
            SemanticSegmenterOutput(logits=outputs), target_sizes=sizes
        )
        return [self._result(f, m.cpu().numpy()) for f, m in zip(features, maps, strict=True)]

    def _result(self, feature: Feature, segmentation: np.ndarray) -> ItemResult:
        ids, counts = np.unique(segmentation, return_counts=True)
        shares = counts / segmentation.size
        labels = [{"label": self.labels[i], "share": float(share)} for i, share in zip(ids, shares, strict=True)]
        masks = [
            Artifact(PNG, png_bytes(((segmentation == i) * 255).astype(np.uint8)), name=self.labels[i]) for i in ids
        ]
        best = int(np.argmax(shares))  # the first of equal shares, in label order
        return ItemResult(item=feature.item, label=labels[best]["label"], score=labels[best]["share"],
                          output={"labels": labels}, n_tokens=feature.length, artifacts=masks)  # fmt: skip
