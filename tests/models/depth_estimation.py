"""Oracle cases for ``depth-estimation``: a tiny DPT and a tiny GLPN against ``pipeline("depth-estimation")``.

The oracle is the pipeline's ``predicted_depth`` (the processor's ``post_process_depth_estimation``:
bicubic to the input's size), float32. Sluice stores the map as float16, so the check compares
the stored map at float16 precision (within half a float16 step of the oracle's value, plus
1e-4) and the float32 ``min``/``max``/``mean`` in ``output`` to 1e-4.

DPT's processor resizes every image to 32x32 (one shape: batched together); GLPN's rounds each
side down to a multiple of 32 (several shapes: batched by shape), so its inputs are the test
images with both sides at least 32.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import OracleCase
from tests.models.images import TOL, image_inputs, sized_image_inputs


def _widen_convolutions(model: Any, last_bias: float | None = None) -> None:
    """He-initialised convolutions: the default init gives DPT a depth of ~1e-9 everywhere."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.normal_(module.bias, std=0.1)
    if last_bias is not None:  # above zero, so the head's final ReLU keeps most pixels
        torch.nn.init.constant_(model.head.head[4].bias, last_bias)


def build_dpt(path: Path, seed: int = 0) -> Path:
    """A 4-layer ViT DPT on 32x32 inputs in 8x8 patches, random (seeded) weights."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_in_index=-1,
    )  # fmt: skip
    model = DPTForDepthEstimation(config).eval()
    _widen_convolutions(model, last_bias=1.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def build_glpn(path: Path, seed: int = 1) -> Path:
    """A 4-stage GLPN (SegFormer encoder), random (seeded) weights; inputs keep their size, rounded to 32."""
    import torch
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessorPil

    torch.manual_seed(seed)
    config = GLPNConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16, head_in_index=-1, max_depth=10,
    )  # fmt: skip
    model = GLPNForDepthEstimation(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    GLPNImageProcessorPil().save_pretrained(path)
    return path


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    """The pipeline's float32 ``predicted_depth`` per image, one image per call (the unbatched computation)."""
    from transformers import pipeline

    estimator = pipeline("depth-estimation", model=str(path), device="cpu")
    return [estimator(x["image"])["predicted_depth"].float().numpy() for x in inputs]


def check_depth(expected: np.ndarray, actual: dict[str, Any]) -> None:
    """The stored depth map at float16 precision, its summary to 1e-4."""
    assert actual["error"] is None, actual["error"]
    ((media_type, _name, data),) = actual["artifacts"]
    assert media_type == "application/x-npy"
    stored = np.load(io.BytesIO(data), allow_pickle=False)
    assert stored.dtype == np.float16
    assert stored.shape == expected.shape
    output = actual["output"]
    assert output["shape"] == list(expected.shape)
    assert output["min"] == pytest.approx(float(expected.min()), abs=TOL)
    assert output["max"] == pytest.approx(float(expected.max()), abs=TOL)
    assert output["mean"] == pytest.approx(float(expected.mean(dtype=np.float64)), abs=TOL)
    # float16 keeps ~3 digits: a value may round to either neighbour when the float32 ones differ in the last bits.
    half_step = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float32) / 2
    assert np.all(np.abs(stored.astype(np.float32) - expected) <= half_step + TOL)


CASES = [
    OracleCase("tiny-dpt", "depth-estimation", build_dpt, image_inputs, pipeline_rows, check_depth),
    OracleCase("tiny-glpn", "depth-estimation", build_glpn, lambda: sized_image_inputs(min_side=32),
               pipeline_rows, check_depth),
]  # fmt: skip
