"""Oracle cases for ``image-classification``: a tiny ViT against ``pipeline("image-classification")``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.models import OracleCase
from tests.models.images import check_ranked, image_inputs

LABELS = ("cat", "dog", "bird", "car", "tree", "boat", "house", "cup")


def build_image_classifier(path: Path, labels: tuple[str, ...] = LABELS, problem_type: str | None = None,
                           seed: int = 0) -> Path:  # fmt: skip
    """A 2-layer ViT on 32x32 images in 8x8 patches, random (seeded) weights, with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )
    model = ViTForImageClassification(config).eval()
    # As for the text classifiers: the default init gives near-uniform scores; a wider head spreads them.
    torch.nn.init.normal_(model.classifier.weight, std=2.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    clf = pipeline("image-classification", model=str(path), device="cpu")
    # One image per call: the oracle is the unbatched computation.
    return [clf(x["image"], top_k={**params, **x}.get("top_k", 5)) for x in inputs]


def _mixed_top_k() -> list[dict[str, Any]]:
    """The job's top_k (3), one item's own (1), and one past the number of labels (clamped, as the pipeline does)."""
    own = {0: {"top_k": 1}, 1: {"top_k": 10}, 2: {}}
    return [{**x, **own[i % 3]} for i, x in enumerate(image_inputs())]


CASES = [
    OracleCase("tiny-vit", "image-classification", lambda p: build_image_classifier(p), image_inputs,
               pipeline_rows, check_ranked),
    OracleCase("tiny-vit-multilabel", "image-classification",
               lambda p: build_image_classifier(p, LABELS[:4], "multi_label_classification", seed=1),
               _mixed_top_k, pipeline_rows, check_ranked, params={"top_k": 3}),
]  # fmt: skip
