"""Collation helpers: pad token rows into rectangles and tensors, shared by every family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sluice.families.base import Feature


def pad_ids(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> np.ndarray:
    """Pad integer rows to a rectangle."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = row
        else:
            out[i, width - len(row) :] = row
    return out


def pad_features(
    features: Sequence[Feature], pad_values: dict[str, int], device: str, side: str = "right"
) -> dict[str, Any]:
    """Collate features into torch tensors on ``device``; pinned memory speeds host-to-GPU copies."""
    import torch

    names = features[0].ids.keys()
    batch: dict[str, Any] = {}
    for name in names:
        arr = pad_ids([f.ids[name] for f in features], pad_values.get(name, 0), side)
        tensor = torch.from_numpy(arr)
        if device.startswith("cuda"):
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        batch[name] = tensor
    return batch
