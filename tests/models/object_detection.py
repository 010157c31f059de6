"""Oracle cases for ``object-detection``: a tiny DETR (ResNet backbone from transformers, no timm)
against ``pipeline("object-detection")``, one image per call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.images import TOL, image_inputs

LABELS = ("cat", "dog", "bird", "car", "tree", "boat")


def build_detr(path: Path, seed: int = 1) -> Path:
    """DETR with a 2-stage ResNet backbone, one encoder and one decoder layer, 12 queries, 48-80 px inputs.

    Default init (std 0.02) makes every query predict the same box and class; wider weights
    (``init_std``) and query embeddings spread them, so images get boxes of several labels with
    scores on both sides of the threshold.
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    torch.manual_seed(seed)
    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                            out_features=["stage2"])  # fmt: skip
    config = DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        num_queries=12, init_std=0.3, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.class_labels_classifier.weight, std=1.0)
        torch.nn.init.normal_(model.model.query_position_embeddings.weight, std=3.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    DetrImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 80}).save_pretrained(path)
    return path


def pipeline_rows(default: float) -> Any:
    """The oracle under a registry default threshold of ``default``."""

    def rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        from transformers import pipeline

        detector = pipeline("object-detection", model=str(path), device="cpu")
        # One image per call: the oracle is the unbatched computation.
        return [detector(x["image"], threshold={**params, **x}.get("threshold", default)) for x in inputs]

    return rows


def check(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    """Objects in the pipeline's order: labels and boxes exactly, scores to 1e-4; the best as label/score."""
    assert actual["error"] is None, actual["error"]
    got = actual["output"]["objects"]
    assert [(o["label"], o["box"]) for o in got] == [(o["label"], o["box"]) for o in expected]
    assert [o["score"] for o in got] == pytest.approx([o["score"] for o in expected], abs=TOL)
    best = max(expected, key=lambda o: o["score"], default=None)
    assert actual["label"] == (best["label"] if best else None)
    assert actual["score"] == (pytest.approx(best["score"], abs=TOL) if best else None)


def _mixed_thresholds() -> list[dict[str, Any]]:
    """The registry's threshold (0.8), the job's (none here), and items' own: 0.3, 0.95 and 1 (nothing kept)."""
    own = {0: {}, 1: {"threshold": 0.3}, 2: {"threshold": 0.95}, 3: {"threshold": 1}}
    return [{**x, **own[i % 4]} for i, x in enumerate(image_inputs()[:20])]


CASES = [
    OracleCase("tiny-detr", "object-detection", build_detr, image_inputs, pipeline_rows(0.5), check),
    OracleCase("tiny-detr-thresholds", "object-detection", build_detr, _mixed_thresholds, pipeline_rows(0.8), check,
               registry={"threshold": 0.8}),
]  # fmt: skip
