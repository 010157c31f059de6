"""Batch formation: pure functions over token lengths, testable without Redis, a model or a GPU.

Features are sorted by length (longest first, so an out-of-memory shows up on the first batch)
and packed greedily while ``count * longest <= max_tokens``: the budget counts *padded* tokens,
which is what a forward pass costs, like text-embeddings-inference's ``max_batch_tokens``.
:class:`TokenBudget` is the one piece of state: the budget a worker currently plans with, which
backs off after an out-of-memory error and recovers after a run of good batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_size: int, groups: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Group indices into batches bounded by padded tokens and by count.

    A single feature longer than ``max_tokens`` still gets a batch of its own: the budget bounds
    padding, it never refuses work. With ``groups`` (one per index), a batch holds one group only
    (images of one pixel shape); each group is planned on its own and the batches come longest first.
    """
    if groups is not None and len(set(groups)) > 1:
        return _plan_grouped(lengths, max_tokens, max_size, groups)
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


def _plan_grouped(
    lengths: Sequence[int], max_tokens: int, max_size: int, groups: Sequence[Hashable]
) -> list[list[int]]:
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    batches = [
        [chosen[j] for j in batch]
        for chosen in members.values()
        for batch in plan_batches([lengths[i] for i in chosen], max_tokens, max_size)
    ]
    return sorted(batches, key=lambda b: (-max(lengths[i] for i in b), b[0]))


#: Growth of a backed-off budget after ``recover_after`` good batches: slow, so one more
#: out-of-memory error is far less likely than a return to the full budget.
RECOVERY_GROWTH = 1.25


@dataclass
class TokenBudget:
    """The padded-token budget batches are planned with: halved on out-of-memory, regrown slowly.

    ``configured`` is the ceiling (``max_batch_tokens``); ``floor`` is the least it backs off to;
    after ``recover_after`` batches in a row without an out-of-memory error it grows by
    :data:`RECOVERY_GROWTH`, up to ``configured`` again.
    """

    configured: int
    floor: int = 256
    recover_after: int = 8
    current: int = field(init=False)
    streak: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.configured))
        self.current = self.configured

    def back_off(self, failed_tokens: int) -> int:
        """An out-of-memory error on a batch of ``failed_tokens`` padded tokens: plan with half of that.

        Taking half of what failed (not of the budget) makes sibling halves that fail at the same
        size count once, and a small batch that failed count for what it was.
        """
        self.current = max(self.floor, min(self.current, failed_tokens // 2))
        self.streak = 0
        return self.current

    def succeeded(self) -> int:
        """A batch ran without running out of memory; grows the budget after enough of them."""
        if self.current >= self.configured:
            return self.current
        self.streak += 1
        if self.streak >= self.recover_after:
            self.streak = 0
            self.current = min(self.configured, max(self.current + 1, int(self.current * RECOVERY_GROWTH)))
        return self.current


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Real tokens / padded tokens over a plan; 1.0 means no padding at all."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return real / padded if padded else 1.0
