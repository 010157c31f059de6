"""Oracle cases for ``image-to-image``: a tiny Swin2SR (x2 super-resolution), pixel-exact.

transformers 5 has no image-to-image pipeline, so the oracle is the model's own forward pass on
the image processor's output, one image at a time, with transformers 4.x's
``ImageToImagePipeline.postprocess`` restated (``squeeze``, ``clamp_(0, 1)``, channels last,
``* 255``, ``round``, ``uint8``), then cropped to the input's size times the model's ``upscale``
(the processor pads the input; the 4.x pipeline returned the padding's output too). The inputs
are the test images of at most 5,000 pixels: a Swin2SR token is a pixel, so large ones are slow.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from tests.models import OracleCase
from tests.models.images import sized_image_inputs

MAX_PIXELS = 5000


def build_swin2sr(path: Path, seed: int = 2) -> Path:
    """A two-stage Swin2SR with 4x4 windows and x2 pixel-shuffle upsampling, random (seeded) weights."""
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessorPil

    torch.manual_seed(seed)
    config = Swin2SRConfig(
        image_size=16, patch_size=1, num_channels=3, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        mlp_ratio=2.0, upscale=2, upsampler="pixelshuffledirect",
    )  # fmt: skip
    model = Swin2SRForImageSuperResolution(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    Swin2SRImageProcessorPil(size_divisor=4).save_pretrained(path)
    return path


def model_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    """Each image through the model alone and the 4.x pipeline's postprocess, cropped: uint8 HxWx3."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageToImage
    from transformers.image_utils import load_image

    model = AutoModelForImageToImage.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    rows = []
    for x in inputs:
        image = load_image(x["image"])
        batch = processor(images=[image], return_tensors="pt")  # the 4.x pipeline's preprocess
        with torch.no_grad():
            (reconstruction,) = model(**batch).reconstruction
        output = reconstruction.data.squeeze().float().cpu().clamp_(0, 1).numpy()
        output = np.moveaxis(output, source=0, destination=-1)
        output = (output * 255.0).round().astype(np.uint8)
        scale = model.config.upscale
        rows.append(output[: image.height * scale, : image.width * scale])
    return rows


def check_image(expected: np.ndarray, actual: dict[str, Any]) -> None:
    """The stored PNG decodes to exactly the oracle's pixels; ``output`` gives its size and scale."""
    from PIL import Image

    assert actual["error"] is None, actual["error"]
    ((media_type, _name, data),) = actual["artifacts"]
    assert media_type == "image/png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image)
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected), f"{int((pixels != expected).sum())} of {pixels.size} values differ"
    height, width = expected.shape[:2]
    assert actual["output"] == {"width": width, "height": height, "scale": 2}


CASES = [
    OracleCase("tiny-swin2sr", "image-to-image", build_swin2sr, lambda: sized_image_inputs(max_pixels=MAX_PIXELS),
               model_rows, check_image),
]  # fmt: skip
