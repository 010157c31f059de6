"""What the image families share: where an item's image may come from, and batching pixel values.

Not a family itself: the image families subclass :class:`HFImageFamily`.

An item's ``image`` field is a local file path, or an ``http(s)`` URL under one of the prefixes in
``Settings.image_url_prefixes`` (``SLUICE_IMAGE_URL_PREFIXES``; none by default, so a worker
fetches nothing unless told to). Submit time checks, under the submitter's settings, that a path
exists and holds an image PIL can read, and that a URL is allowed, without fetching it; run time
checks the prefix again under the worker's settings (a worker obeys its own) and loads with
``transformers.image_utils.load_image``, as the pipelines do (EXIF orientation applied, RGB).

An image costs the number of patches of its processed pixels (pixels / patch area) in the token
budget, so ``max_batch_tokens`` still bounds how many images (and how many pixels) go into one
forward pass, and only images whose processed pixels have one shape share a batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sluice.errors import ItemError, ValidationError
from sluice.families.base import Feature, TaskFamily
from sluice.families.common import text_field
from sluice.families.hf import load_model
from sluice.registry import ModelSpec
from sluice.settings import Settings

URL_SCHEMES = ("http://", "https://")
#: seconds to wait for an image URL; a slow server fails its item instead of stalling the chunk
URL_TIMEOUT_S = 30.0
#: patch side used to price an image when the model's config names none (CNNs)
DEFAULT_PATCH = 16


def _url_error(url: str, item: int, name: str, prefixes: list[str]) -> str | None:
    """Why ``url`` may not be fetched (not under any of ``prefixes``), or None when it may."""
    if any(url.startswith(prefix) for prefix in prefixes):
        return None
    allowed = ", ".join(repr(p) for p in prefixes) if prefixes else "none"
    return (
        f"item {item}: field {name!r}: URL {url!r} is not under an allowed prefix (allowed: {allowed}); "
        "add its prefix to SLUICE_IMAGE_URL_PREFIXES (a JSON list, e.g. '[\"https://images.example.com/\"]') "
        "or give a local path"
    )


def validate_image(fields: dict[str, Any], item: int, settings: Settings, name: str = "image") -> None:
    """Submit-time check of an image field under ``settings``, without a model and without fetching URLs."""
    source = str(text_field(fields, name, item))
    if source.startswith(URL_SCHEMES):
        error = _url_error(source, item, name, settings.image_url_prefixes)
        if error:
            raise ValidationError(error)
        return
    path = Path(source)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ValidationError(f"item {item}: field {name!r}: {source!r} {what}; give an image file path or a URL")
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:
        raise ValidationError(f"item {item}: field {name!r}: {source!r} is not a readable image ({exc})") from exc


def load_image(source: str, item: int, prefixes: list[str], name: str = "image") -> Any:
    """The item's image as an RGB PIL image; raises :class:`ItemError` when it cannot be had.

    A URL is fetched only under one of ``prefixes`` (the worker's ``image_url_prefixes``).
    """
    if source.startswith(URL_SCHEMES):
        error = _url_error(source, item, name, prefixes)
        if error:
            raise ItemError(error)
    elif not Path(source).is_file():
        raise ItemError(f"item {item}: field {name!r}: {source!r} does not exist")
    from transformers.image_utils import load_image as hf_load_image

    try:
        return hf_load_image(source, timeout=URL_TIMEOUT_S)
    except Exception as exc:
        raise ItemError(f"item {item}: field {name!r}: cannot read image {source!r}: {exc}") from exc


def png_bytes(pixels: np.ndarray) -> bytes:
    """``uint8`` pixels (height x width, or x 3 for RGB) as a PNG file: lossless, so a mask or an
    upscaled image reads back exactly as computed."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "PNG")
    return buffer.getvalue()


class HFImageFamily(TaskFamily):
    """A family whose items are one image each, run through an image processor and one model.

    ``processor_class`` loads what preprocesses the inputs (for text-and-image models a processor
    holding both a tokenizer and an image processor); features carry processed pixel values in
    ``meta`` and :meth:`collate` stacks them.
    """

    text_fields: ClassVar[tuple[str, ...]] = ()
    auto_class: ClassVar[str] = "AutoModel"
    processor_class: ClassVar[str] = "AutoImageProcessor"

    processor: Any
    image_processor: Any
    model: Any

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)

    def setup(self) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        remote = self.spec.trust_remote_code
        # No backend is forced: without torchvision, transformers picks its PIL processors, as the pipelines do.
        self.processor = getattr(transformers, self.processor_class).from_pretrained(
            self.spec.path, trust_remote_code=remote
        )
        self.image_processor = getattr(self.processor, "image_processor", self.processor)
        self.model = load_model(self.spec, self.auto_class, self.device)
        config = self.model.config
        vision = getattr(config, "vision_config", None) or config
        patch = getattr(vision, "patch_size", None)
        self.patch = patch if isinstance(patch, int) and patch > 0 else DEFAULT_PATCH

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        """The item's processed pixels; an image that cannot be had raises :class:`ItemError`.

        Features are grouped by pixel shape (only equal shapes stack into a batch: processors that
        keep the aspect ratio give each size its own), and carry the image's ``image_size``
        (height, width) for families whose outputs are resized back to it.
        """
        image = load_image(str(fields.get("image", "")), item, self.settings.image_url_prefixes)
        pixels = self.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        cost = max(1, int(pixels.shape[-2] * pixels.shape[-1]) // (self.patch * self.patch))
        meta = {"pixel_values": pixels, "image_size": (image.height, image.width), **self.item_meta(item, fields)}
        return [Feature(item=item, ids={}, length=cost, meta=meta, group=tuple(pixels.shape))]

    def item_meta(self, item: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Per-item options the family needs after the forward pass (labels, top_k, ...)."""
        return {}

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        import torch

        pixels = torch.from_numpy(np.stack([f.meta["pixel_values"] for f in features]))
        if self.device.startswith("cuda"):
            pixels = pixels.pin_memory()
        return {"pixel_values": pixels.to(self.device, dtype=self.model.dtype, non_blocking=True)}

    def release(self) -> None:
        self.model = None
        self.processor = self.image_processor = None
