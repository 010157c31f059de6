"""``depth-estimation``: ``AutoModelForDepthEstimation`` (DPT, GLPN, Depth Anything) to a depth map.

What is stored is the model's predicted depth resized to the input image's size, exactly as
``pipeline("depth-estimation")`` returns it in ``predicted_depth`` (the image processor's own
``post_process_depth_estimation``, bicubic for DPT and GLPN), as an ``application/x-npy``
artifact of ``float16`` (height x width; half the bytes of float32, about three significant
digits). Not the pipeline's ``depth`` picture: that is rescaled per image to 8 bits and loses the
scale. ``output`` holds ``min``, ``max`` and ``mean`` of the float32 map and its ``shape``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from sluice.families.base import Artifact, Feature, ItemResult
from sluice.families.images import HFImageFamily

NPY = "application/x-npy"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file (``numpy.load`` reads it back; never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class DepthEstimation(HFImageFamily):
    task = "depth-estimation"
    auto_class = "AutoModelForDepthEstimation"

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**batch).predicted_depth.float()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        from transformers.modeling_outputs import DepthEstimatorOutput

        # Positional, as the pipeline passes it: ZoeDepth reads it as source sizes, others as target sizes.
        sizes = [f.meta["image_size"] for f in features]
        maps = self.image_processor.post_process_depth_estimation(DepthEstimatorOutput(predicted_depth=outputs), sizes)
        return [self._result(f, m["predicted_depth"]) for f, m in zip(features, maps, strict=True)]

    @staticmethod
    def _result(feature: Feature, depth: Any) -> ItemResult:
        values = depth.float().cpu().numpy()
        summary = {
            "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean(dtype=np.float64)),
            "shape": list(values.shape),
        }  # fmt: skip
        artifact = Artifact(NPY, npy_bytes(values.astype(np.float16)), name="depth")
        return ItemResult(item=feature.item, output=summary, n_tokens=feature.length, artifacts=[artifact])
