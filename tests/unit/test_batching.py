"""Batch planning is a pure function: budgets, sorting and padding without a model."""

from __future__ import annotations

import random

from worker.batching import pad_ids, padding_efficiency, plan_batches


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
