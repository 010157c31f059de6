"""``object-detection``: ``AutoModelForObjectDetection`` (DETR, YOLOS, ...) boxes, as ``pipeline("object-detection")``.

Each image goes through the model's image processor, the model, and the processor's own
``post_process_object_detection`` with the item's ``threshold`` and the image's original size,
exactly as the pipeline does, so ``output.objects`` is the pipeline's list: ``{"score", "label",
"box": {"xmin", "ymin", "xmax", "ymax"}}`` in the model's query order, boxes in whole pixels of
the original image. ``label`` / ``score`` are those of the most confident object (None when no
object passes the threshold).

``threshold`` (0 to 1) is an item field or job param, else the registry entry's ``threshold``,
else 0.5, the pipeline's default. Processors that keep the aspect ratio (DETR resizes the shortest
edge) give images of different sizes different pixel shapes; only images of one shape share a
forward pass, so no image is padded and batching never changes a box (a padded border would feed
the convolutional backbone's features next to it).
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import model_labels
from sluice.families.images import HFImageFamily, validate_image
from sluice.registry import ModelSpec
from sluice.settings import Settings

DEFAULT_THRESHOLD = 0.5
#: a box's keys, in the order of the processor's corner coordinates
CORNERS = ("xmin", "ymin", "xmax", "ymax")


def threshold(fields: dict[str, Any], where: str, default: float = DEFAULT_THRESHOLD) -> float:
    """The score an object needs to be kept: a number in [0, 1] (``default`` when absent)."""
    value = fields.get("threshold")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValidationError(f"{where}: field 'threshold' must be a number in [0, 1], got {value!r}")
    return float(value)


def registry_threshold(spec: ModelSpec) -> float:
    """The registry entry's default threshold (``threshold = 0.7`` in its table), else 0.5."""
    return threshold(spec.options, f"registry model {spec.name!r}")


class ObjectDetection(HFImageFamily):
    task = "object-detection"
    auto_class = "AutoModelForObjectDetection"

    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        registry_threshold(spec)
        threshold(params, "job params")

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        validate_image(fields, item, settings)
        threshold(fields, f"item {item}")

    def setup(self) -> None:
        super().setup()
        self.labels = model_labels(self.spec, self.model.config)
        self.default_threshold = registry_threshold(self.spec)

    def item_meta(self, item: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {"threshold": threshold(fields, f"item {item}", self.default_threshold)}

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        batch = super().collate(features)
        batch["meta"] = [(f.meta["threshold"], f.meta["image_size"]) for f in features]
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        """Per image, the kept objects as ``(scores, label ids, boxes)`` lists, post-processed one image at a
        time as the pipeline does (its threshold, its original size)."""
        import torch

        meta = batch.pop("meta")
        outputs = self.model(**batch)
        rows = len(meta)
        found = []
        for i, (cut, (height, width)) in enumerate(meta):
            # The image's own outputs, as the pipeline's batch of one holds them.
            own = outputs.__class__({k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,) else v
                                     for k, v in outputs.items()})  # fmt: skip
            size = torch.IntTensor([[height, width]])
            (kept,) = self.image_processor.post_process_object_detection(own, cut, size)
            found.append((kept["scores"].tolist(), kept["labels"].tolist(), kept["boxes"].int().tolist()))
        return found

    def postprocess(self, features: list[Feature], outputs: Any) -> list[ItemResult]:
        results = []
        for feature, (scores, label_ids, boxes) in zip(features, outputs, strict=True):
            objects = [
                {"score": score, "label": self.labels[label], "box": dict(zip(CORNERS, box, strict=True))}
                for score, label, box in zip(scores, label_ids, boxes, strict=True)
            ]
            best = max(objects, key=lambda o: o["score"], default=None)
            results.append(
                ItemResult(
                    item=feature.item,
                    label=best["label"] if best else None,
                    score=best["score"] if best else None,
                    output={"objects": objects},
                    n_tokens=feature.length,
                )
            )
        return results
