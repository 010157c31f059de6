"""In-process baselines a user would write instead of Sluice, and the compute floor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def per_document_loop(model: Any, tokenizer: Any, docs: list[str], max_length: int) -> None:
    """What a naive task per document does: tokenise and run each document alone."""
    with torch.inference_mode():
        for doc in docs:
            enc = tokenizer(doc, truncation=True, max_length=max_length, return_tensors="pt")
            model(**enc)


def hf_pipeline(task: str, path: str, docs: list[str], max_length: int, batch_size: int = 32) -> None:
    from transformers import pipeline

    pipe = pipeline(task, model=path, device="cpu")
    kwargs = {"truncation": True, "max_length": max_length} if task == "feature-extraction" else {"truncation": True}
    for _ in pipe(docs, batch_size=batch_size, **kwargs):
        pass


def st_encode(path: str, docs: list[str], batch_size: int = 32) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.encode(docs, batch_size=batch_size)


def matmul_flops(trials: int = 5, seconds: float = 0.5, n: int = 1024) -> float:
    """Float32 matmul FLOP/s on this machine with the current thread count: the best of several
    short trials, since the floor is what the machine can do and a shared machine's noise only
    ever slows a trial down."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def encoder_flops(config: Any, lengths: list[int]) -> float:
    """Forward FLOPs of a BERT-style encoder for documents of the given token lengths.

    Per layer and token: 4*d*d (Q, K, V, output projections) + 2*d*ff (feed-forward) multiply-adds,
    plus 2*n*d for attention scores and weighted sums over a sequence of n tokens; 2 FLOPs each.
    """
    d = config.hidden_size if hasattr(config, "hidden_size") else config.dim
    ff = config.intermediate_size if hasattr(config, "intermediate_size") else config.hidden_dim
    layers = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers
    n = np.asarray(lengths, dtype=np.float64)
    per_layer = n * (4 * d * d + 2 * d * ff) + 2 * n * n * d
    return float(2 * layers * per_layer.sum())
