"""The batching loop: features in, item results out, one batch at a time.

It knows nothing about Redis or the database: given a loaded family and ``(item, fields)`` pairs,
it tokenises them, plans batches by token budget over length-sorted features, runs each batch,
and yields the items completed by that batch; the caller commits them while the next batch runs.
A batch that raises is retried one feature at a time, so a bad item fails alone; an
out-of-memory error splits the batch in half and backs the token budget off, and the batches
still to run are re-planned with the smaller budget.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from sluice.families.base import Feature, ItemResult, TaskFamily
from worker.batching import TokenBudget, plan_batches

log = logging.getLogger("sluice.worker")

# One budget per resident model, so that a back-off outlives the chunk that ran out of memory.
_budgets: weakref.WeakKeyDictionary[TaskFamily, tuple[tuple[int, int, int], TokenBudget]] = weakref.WeakKeyDictionary()


def shared_budget(family: TaskFamily, max_tokens: int, floor: int, recover_after: int) -> TokenBudget:
    """The token budget of a loaded model, kept across chunks; a fresh one when the settings change."""
    key = (max_tokens, floor, recover_after)
    known = _budgets.get(family)
    if known is None or known[0] != key:
        known = _budgets[family] = (key, TokenBudget(max_tokens, floor, recover_after))
    return known[1]


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
    """Every item's features (or its failure): the family's batched preprocessing, else item by item.

    ``preprocess_many`` fails items on its own; should it raise all the same, the chunk is
    preprocessed one item at a time so that only the bad item fails, and the fallback is logged.
    """
    try:
        return family.preprocess_many(items)
    except Exception as exc:
        log.warning(
            "model %s (%s): preprocessing %d items together raised %s: %s; preprocessing them one at a time",
            family.spec.name, family.task, len(items), type(exc).__name__, exc,
        )  # fmt: skip
    return family.preprocess_each(items)


class Engine:
    """Runs items through a loaded family under a token budget.

    ``budget`` is shared by the engines of one model (see :func:`shared_budget`); without one the
    engine backs off on its own.
    """

    def __init__(
        self,
        family: TaskFamily,
        max_batch_tokens: int,
        max_batch_size: int,
        budget: TokenBudget | None = None,
    ) -> None:
        self.family = family
        self.max_batch_size = max_batch_size
        self.budget = budget or TokenBudget(max_batch_tokens)

    def run(self, items: list[tuple[int, dict[str, Any]]]) -> Generator[tuple[list[ItemResult], BatchStats]]:
        """Yield ``(completed item results, batch stats)`` after every batch."""
        pending, features, failed_early = self._features(items)
        if failed_early:
            yield failed_early, BatchStats()
        plan = self._plan(features, range(len(features)))
        while plan:
            batch = [features[i] for i in plan.pop(0)]
            budget, stats = self.budget.current, BatchStats()
            outcomes = self._run_batch(batch, stats)
            if self.budget.current != budget:
                # Backed off (or recovered): the batches still to run are re-planned.
                plan = self._plan(features, [i for b in plan for i in b])
            yield self._collect(pending, batch, outcomes, stats), stats

    def _features(
        self, items: list[tuple[int, dict[str, Any]]]
    ) -> tuple[dict[int, _Pending], list[Feature], list[ItemResult]]:
        """Tokenise every item: per-item state, all features, and the items that failed already."""
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
        return pending, features, failed_early

    def _plan(self, features: list[Feature], indices: Iterable[int]) -> list[list[int]]:
        """Batches (indices into ``features``) of ``indices`` under the budget as it is now."""
        chosen = list(indices)
        lengths, groups = [features[i].length for i in chosen], [features[i].group for i in chosen]
        plan = plan_batches(lengths, self.budget.current, self.max_batch_size, groups)
        return [[chosen[j] for j in batch] for batch in plan]

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
                parts = self.family.postprocess(batch, self.family.forward(self.family.collate(batch)))
        except Exception as exc:
            if len(batch) == 1:
                # Without its traceback, whose frames would keep the failed pass's tensors alive.
                return [exc.with_traceback(None)]
            oom = _is_oom(exc)
            if not oom:
                log.warning("model %s (%s): a batch of %d features raised %s: %s; running them one at a time",
                            self.family.spec.name, self.family.task, len(batch), type(exc).__name__, exc)  # fmt: skip
        else:
            before = self.budget.current
            if self.budget.succeeded() != before:
                log.info("max_batch_tokens recovers %d -> %d", before, self.budget.current)
            stats.forward_s += time.perf_counter() - start
            stats.features += len(batch)
            stats.real_tokens += sum(f.length for f in batch)
            stats.padded_tokens += len(batch) * max(f.length for f in batch)
            return list(parts)
        # Retried outside the except block, so the failed attempt's memory is freed first.
        if oom:
            self._back_off(batch, stats)
        # Not OOM: run features one by one, so one bad input cannot fail its neighbours.
        half = len(batch) // 2 if oom else 1
        return [out for part in _split(batch, half) for out in self._run_batch(part, stats)]

    def _back_off(self, batch: list[Feature], stats: BatchStats) -> None:
        import torch

        stats.splits += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        padded = len(batch) * max(f.length for f in batch)
        before = self.budget.current
        after = self.budget.back_off(padded)
        if after != before:
            log.warning(
                "out of memory on %d features (%d padded tokens): max_batch_tokens backs off %d -> %d",
                len(batch), padded, before, after,
            )  # fmt: skip


def _split(batch: list[Feature], size: int) -> list[list[Feature]]:
    return [batch[i : i + size] for i in range(0, len(batch), size)]
