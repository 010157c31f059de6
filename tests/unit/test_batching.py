"""Batch planning is a pure function: budgets, sorting and padding without a model; the token
budget backs off on out-of-memory and recovers."""

from __future__ import annotations

import random

from sluice.families.collate import pad_ids
from worker.batching import TokenBudget, padding_efficiency, plan_batches


def test_batches_respect_padded_token_budget_and_count() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    plan = plan_batches(lengths, max_tokens=2048, max_size=32)
    assert sorted(i for batch in plan for i in batch) == list(range(1000))
    for batch in plan:
        assert len(batch) <= 32
        assert len(batch) * max(lengths[i] for i in batch) <= 2048


def test_length_sorting_keeps_padding_small() -> None:
    rng = random.Random(1)
    lengths = [rng.choice([5, 8, 12, 200, 250]) for _ in range(500)]
    sorted_plan = plan_batches(lengths, max_tokens=4096, max_size=64)
    naive = [list(range(i, min(i + 32, 500))) for i in range(0, 500, 32)]
    assert padding_efficiency(sorted_plan, lengths) > 0.9 > padding_efficiency(naive, lengths)


def test_longest_first_and_oversize_feature_gets_its_own_batch() -> None:
    plan = plan_batches([10, 5000, 20], max_tokens=100, max_size=8)
    assert plan[0] == [1]
    assert plan[1] == [2, 0]


def test_pad_ids_left_and_right() -> None:
    assert pad_ids([[1, 2], [3]], 0).tolist() == [[1, 2], [3, 0]]
    assert pad_ids([[1, 2], [3]], 9, side="left").tolist() == [[1, 2], [9, 3]]


def test_budget_halves_what_failed_with_a_floor_and_siblings_count_once() -> None:
    budget = TokenBudget(8192, floor=512)
    assert budget.back_off(8192) == 4096
    assert budget.back_off(4096) == 2048
    assert budget.back_off(4096) == 2048  # the other half of the same split: no second halving
    assert budget.back_off(300) == 512  # never below the floor
    assert TokenBudget(100, floor=512).back_off(100) == 100  # a floor above the budget is the budget


def test_budget_grows_a_quarter_after_a_run_of_good_batches_up_to_the_configured_one() -> None:
    budget = TokenBudget(1000, floor=100, recover_after=3)
    assert [budget.succeeded() for _ in range(3)] == [1000, 1000, 1000]  # nothing to recover
    budget.back_off(1000)
    seen = [budget.succeeded() for _ in range(12)]
    assert seen == [500, 500, 625, 625, 625, 781, 781, 781, 976, 976, 976, 1000]
    budget.back_off(1000)
    budget.succeeded()
    budget.back_off(1000)  # an out-of-memory error restarts the count
    assert [budget.succeeded() for _ in range(3)] == [500, 500, 625]
