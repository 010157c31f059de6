"""``image-to-image``: ``AutoModelForImageToImage`` (Swin2SR super-resolution, restoration).

Stores the output image as a PNG artifact, converted as transformers 4.x's
``ImageToImagePipeline`` did (clamp to [0, 1], x255, round, ``uint8``; transformers 5 has no such
pipeline) and cropped to the input's size times the model's scale: the image processor pads the
input (Swin2SR to a multiple of its window), and the padding's output is not part of the answer.
``output`` holds ``width``, ``height`` and ``scale``.

One image per forward pass: a batch of even equal shapes gives float results that differ in the
last bits from one image alone, and that would move some pixels by one level after rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.families.base import Artifact, Feature, ItemResult
from sluice.families.images import HFImageFamily, png_bytes

PNG = "image/png"


class ImageToImage(HFImageFamily):
    task = "image-to-image"
    auto_class = "AutoModelForImageToImage"

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        features = super().preprocess(item, fields)
        for feature in features:
            feature.group = ("item", item)  # a group of its own: never batched with another image
        return features

    def forward(self, batch: dict[str, Any]) -> Any:
        reconstruction = self.model(**batch).reconstruction.float().clamp_(0, 1)
        scale = reconstruction.shape[-2] // batch["pixel_values"].shape[-2]
        return reconstruction.cpu().numpy(), scale

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        images, scale = outputs
        return [self._result(f, image, scale) for f, image in zip(features, images, strict=True)]

    @staticmethod
    def _result(feature: Feature, image: np.ndarray, scale: int) -> ItemResult:
        height, width = (side * scale for side in feature.meta["image_size"])
        pixels = np.moveaxis(image[:, :height, :width], 0, -1)
        pixels = (pixels * 255.0).round().astype(np.uint8)
        if pixels.shape[-1] == 1:  # a one-channel model: a greyscale PNG
            pixels = pixels[..., 0]
        output = {"width": width, "height": height, "scale": scale}
        artifact = Artifact(PNG, png_bytes(pixels))
        return ItemResult(item=feature.item, output=output, n_tokens=feature.length, artifacts=[artifact])
