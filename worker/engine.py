"""The batching loop: features in, item results out, one batch at a time.

It knows nothing about Redis or the database: given a loaded family and ``(item, fields)`` pairs,
it tokenises them, plans batches by token budget over length-sorted features, runs each batch,
and yields the items completed by that batch so the caller can commit them before moving on.
A batch that raises is retried one feature at a time, so a bad item fails alone; an
out-of-memory error splits the batch in half instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.batching import plan_batches
from worker.families.base import Feature, ItemResult, TaskFamily


@dataclass
class BatchStats:
    """What one batch cost; summed into throughput and padding-efficiency metrics."""

    features: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    forward_s: float = 0.0
    splits: int = 0

    def add(self, other: BatchStats) -> None:
        self.features += other.features
        self.real_tokens += other.real_tokens
        self.padded_tokens += other.padded_tokens
        self.forward_s += other.forward_s
        self.splits += other.splits

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


@dataclass
class _Pending:
    fields: dict[str, Any]
    needed: int
    parts: dict[int, Any] = field(default_factory=dict)
    error: str | None = None


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _prepare(family: TaskFamily, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
    many = getattr(family, "preprocess_many", None)
    try:
        if many is not None:
            return many(items)  # type: ignore[no-any-return]
    except Exception:
        pass  # fall through: one item at a time, so only the bad one fails
    out: list[list[Feature] | ItemResult] = []
    for item, fields in items:
        try:
            out.append(family.preprocess(item, fields))
        except Exception as exc:
            out.append(ItemResult(item=item, error=f"{type(exc).__name__}: {exc}"))
    return out


class Engine:
    """Runs items through a loaded family under a token budget."""

    def __init__(self, family: TaskFamily, max_batch_tokens: int, max_batch_size: int) -> None:
        self.family = family
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size

    def run(self, items: list[tuple[int, dict[str, Any]]]) -> Iterator[tuple[list[ItemResult], BatchStats]]:
        """Yield ``(completed item results, batch stats)`` after every batch."""
        pending: dict[int, _Pending] = {}
        features: list[Feature] = []
        failed_early: list[ItemResult] = []
        for (item, fields), prepared in zip(items, _prepare(self.family, items), strict=True):
            if isinstance(prepared, ItemResult):
                failed_early.append(prepared)
                continue
            if not prepared:
                failed_early.append(ItemResult(item=item, error="nothing to process after preprocessing"))
                continue
            pending[item] = _Pending(fields=fields, needed=len(prepared))
            for order, feature in enumerate(prepared):
                feature.meta["_order"] = order
                features.append(feature)
        if failed_early:
            yield failed_early, BatchStats()
        plan = plan_batches([f.length for f in features], self.max_batch_tokens, self.max_batch_size)
        for batch in plan:
            batch_features = [features[i] for i in batch]
            stats = BatchStats()
            outcomes = self._run_batch(batch_features, stats)
            yield self._collect(pending, batch_features, outcomes, stats), stats

    def _collect(
        self,
        pending: dict[int, _Pending],
        batch: list[Feature],
        outcomes: list[Any],
        stats: BatchStats,
    ) -> list[ItemResult]:
        done: list[ItemResult] = []
        per_item_ms = 1000.0 * stats.forward_s / max(len(batch), 1)
        for feature, outcome in zip(batch, outcomes, strict=True):
            state = pending[feature.item]
            if isinstance(outcome, BaseException):
                state.error = state.error or f"{type(outcome).__name__}: {outcome}"
            state.parts[feature.meta["_order"]] = outcome
            if len(state.parts) < state.needed:
                continue
            del pending[feature.item]
            done.append(self._finish(feature.item, state, per_item_ms))
        return done

    def _finish(self, item: int, state: _Pending, per_item_ms: float) -> ItemResult:
        if state.error:
            return ItemResult(item=item, error=state.error)
        parts = [state.parts[i] for i in range(state.needed)]
        try:
            result = self.family.combine(item, state.fields, parts)
        except Exception as exc:
            return ItemResult(item=item, error=f"{type(exc).__name__}: {exc}")
        result.compute_ms = per_item_ms
        return result

    def _run_batch(self, batch: list[Feature], stats: BatchStats) -> list[Any]:
        """Outputs per feature; an exception object in place of the output of a feature that failed."""
        import torch

        start = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = self.family.forward(self.family.collate(batch))
                parts = self.family.postprocess(batch, outputs)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            if _is_oom(exc):
                stats.splits += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            half = len(batch) // 2 if _is_oom(exc) else 1
            # Not OOM: run features one by one, so one bad input cannot fail its neighbours.
            return [out for part in _split(batch, half) for out in self._run_batch(part, stats)]
        stats.forward_s += time.perf_counter() - start
        stats.features += len(batch)
        stats.real_tokens += sum(f.length for f in batch)
        stats.padded_tokens += len(batch) * max(f.length for f in batch)
        return list(parts)


def _split(batch: list[Feature], size: int) -> list[list[Feature]]:
    return [batch[i : i + size] for i in range(0, len(batch), size)]
