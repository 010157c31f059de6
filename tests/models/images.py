"""Test images for the image families, drawn with PIL: no downloads, no files in the repository.

The images mix sizes and aspect ratios, modes (RGB, grayscale ``L``, ``RGBA``, palette ``P``,
``CMYK``) and formats (PNG, JPEG, one JPEG with an EXIF rotation), so the oracle comparison covers
the conversions ``load_image`` and the image processors do. They are written once per process to
a fixed directory (``inputs()`` of an oracle case takes no argument), which a worker process
started by the tests reads by absolute path, and removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

TOL = 1e-4

# (width, height, mode, format): every mode each format can store, sizes from 8 px to far past 32.
KINDS = [
    (32, 32, "RGB", "PNG"),
    (64, 48, "RGB", "JPEG"),
    (17, 23, "L", "PNG"),
    (300, 200, "RGBA", "PNG"),
    (9, 120, "RGB", "PNG"),
    (128, 128, "L", "JPEG"),
    (45, 31, "P", "PNG"),
    (50, 70, "CMYK", "JPEG"),
    (224, 224, "RGB", "JPEG"),
    (8, 8, "RGBA", "PNG"),
]


def _draw(width: int, height: int, mode: str, seed: int) -> Any:
    """Seeded noise over a gradient, so images differ in colour and structure."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 64 * 4], axis=-1)
    tint = rng.uniform(0.2, 1.0, size=3)
    noise = rng.normal(0, rng.uniform(5, 80), size=(height, width, 3))
    rgb = Image.fromarray(np.clip(base * tint + noise, 0, 255).astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8), "L")
        image = rgb.convert("RGBA")
        image.putalpha(alpha)
        return image
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


@cache
def image_dir() -> Path:
    """A directory of test images, written on first use and removed at exit."""
    from PIL import Image

    root = Path(tempfile.gettempdir()) / f"sluice-test-images-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for i in range(30):
        width, height, mode, fmt = KINDS[i % len(KINDS)]
        # Cycle sizes too, so each mode appears at several sizes.
        width, height = (width + 7 * (i // len(KINDS)), height + 5 * (i // len(KINDS)))
        _draw(width, height, mode, seed=i).save(root / f"{i:02d}-{mode}.{fmt.lower()}", fmt)
    rotated = _draw(40, 24, "RGB", seed=99)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise when shown
    rotated.save(root / "30-exif-rotated.jpeg", "JPEG", exif=exif)
    return root


def image_paths() -> list[str]:
    return [str(p) for p in sorted(image_dir().iterdir())]


def image_inputs() -> list[dict[str, Any]]:
    """One item per test image: ``{"image": absolute path}``."""
    return [{"image": path} for path in image_paths()]


def sized_image_inputs(min_side: int = 0, max_pixels: int | None = None) -> list[dict[str, Any]]:
    """The items of :func:`image_inputs` whose images have both sides at least ``min_side`` and at
    most ``max_pixels`` pixels (for models that need a least size, or are slow on large images)."""
    from PIL import Image

    chosen = []
    for item in image_inputs():
        with Image.open(item["image"]) as image:
            width, height = image.size
        if min(width, height) >= min_side and (max_pixels is None or width * height <= max_pixels):
            chosen.append(item)
    return chosen


def check_ranked(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    """A stored row against a pipeline's ranked ``[{"label", "score"}, ...]``: same labels in order, scores to 1e-4."""
    assert actual["error"] is None, actual["error"]
    assert actual["label"] == expected[0]["label"]
    assert actual["score"] == pytest.approx(expected[0]["score"], abs=TOL)
    got = actual["output"]["scores"]
    assert [s["label"] for s in got] == [s["label"] for s in expected]
    assert [s["score"] for s in got] == pytest.approx([s["score"] for s in expected], abs=TOL)
