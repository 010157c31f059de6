"""Oracle cases for ``image-segmentation``: a tiny SegFormer against the semantic segmentation pipeline.

The oracle is ``pipeline("image-segmentation", subtask="semantic")``.

The pipeline gives one ``{"label", "mask"}`` per label present (label-id order, masks 0/255 at
the input's size); Sluice stores the same masks as PNG artifacts named by label, which must decode
to exactly the pipeline's masks, and each label's pixel share in ``output.labels``.

Exactly, but for float ties: a batch of images gives logits that differ from one image's in the
last bits (PyTorch's CPU kernels are not batch-invariant), so a pixel whose two best labels'
resized logits are within 1e-4 of each other may go either way. The oracle also computes that
margin per pixel (the model alone, the processor's segmentation scores), and a stored mask may
differ from the pipeline's only where the margin is below 1e-4.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import OracleCase
from tests.models.images import TOL, image_inputs

LABELS = ("sky", "road", "tree", "car", "person", "building")


def build_segformer(path: Path, seed: int = 3) -> Path:
    """A 4-stage SegFormer on 64x64 inputs, six labels, random (seeded) weights."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=16, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    model = SegformerForSemanticSegmentation(config).eval()
    # A wider classifier: the default init gives nearly equal logits, so one label would win everywhere.
    torch.nn.init.normal_(model.decode_head.classifier.weight, std=1.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    SegformerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    """Per image: ``([(label, mask as a uint8 array), ...], margin)`` from the pipeline, one image per call."""
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        masks = [(s["label"], np.asarray(s["mask"])) for s in segmenter(x["image"], subtask="semantic")]
        rows.append((masks, _margin(segmenter, x)))
    return rows


def _margin(segmenter: Any, x: dict[str, Any]) -> np.ndarray:
    """Per pixel, how far the best label's resized logit is above the second's (the pipeline's own maths)."""
    import torch
    from transformers.image_utils import load_image

    image = load_image(x["image"])
    with torch.no_grad():
        outputs = segmenter.model(**segmenter.image_processor(images=[image], return_tensors="pt"))
    (scores,) = segmenter.image_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)], return_segmentation_scores=True
    )
    best, second = scores.segmentation_scores.topk(2, dim=0).values
    return (best - second).numpy()  # type: ignore[no-any-return]


def check_masks(oracle: tuple[list[tuple[str, np.ndarray]], np.ndarray], actual: dict[str, Any]) -> None:
    """Masks pixel-exact but for float ties, in the pipeline's order, named by label; shares and the largest one."""
    from PIL import Image

    expected, margin = oracle
    assert actual["error"] is None, actual["error"]
    assert [name for _, name, _ in actual["artifacts"]] == [label for label, _ in expected]
    for (media_type, name, data), (_, mask) in zip(actual["artifacts"], expected, strict=True):
        assert media_type == "image/png"
        with Image.open(io.BytesIO(data)) as image:
            stored = np.asarray(image)
        assert stored.shape == mask.shape, name
        differ = stored != mask
        assert np.all(margin[differ] < TOL), f"{name}: {int(differ.sum())} pixels differ, margins {margin[differ]}"
    shares = [float((mask == 255).mean()) for _, mask in expected]
    got = actual["output"]["labels"]
    assert [entry["label"] for entry in got] == [label for label, _ in expected]
    assert [entry["share"] for entry in got] == pytest.approx(shares, abs=TOL)
    best = int(np.argmax(shares))
    assert actual["label"] == expected[best][0]
    assert actual["score"] == pytest.approx(shares[best], abs=TOL)


CASES = [
    OracleCase("tiny-segformer", "image-segmentation", build_segformer, image_inputs, pipeline_rows, check_masks),
]
