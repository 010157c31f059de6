"""Batch formation: pure functions over token lengths, testable without Redis, a model or a GPU.

Features are sorted by length (longest first, so an out-of-memory shows up on the first batch)
and packed greedily while ``count * longest <= max_tokens``: the budget counts *padded* tokens,
which is what a forward pass costs, like text-embeddings-inference's ``max_batch_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from worker.families.base import Feature


def plan_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Group indices into batches bounded by padded tokens and by count.

    A single feature longer than ``max_tokens`` still gets a batch of its own: the budget bounds
    padding, it never refuses work.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for idx in order:
        length = max(int(lengths[idx]), 1)
        width = max(longest, length)
        if current and (len(current) + 1 > max_size or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current, width = [], length
        current.append(idx)
        longest = width
    if current:
        batches.append(current)
    return batches


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Real tokens / padded tokens over a plan; 1.0 means no padding at all."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return real / padded if padded else 1.0


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
