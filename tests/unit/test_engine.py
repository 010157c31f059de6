"""The batching loop with a stand-in family: failure isolation, out-of-memory splitting and back-off."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sluice.errors import ItemError
from sluice.families.base import Feature, ItemResult, TaskFamily
from sluice.registry import ModelSpec
from worker.batching import TokenBudget
from worker.engine import Engine, shared_budget


class Echo(TaskFamily):
    """Scores each item by its length; 'boom' poisons any batch it is in; big batches run out of memory."""

    task = "echo-test"

    def __init__(self, oom_above: int = 10**9) -> None:
        super().__init__(ModelSpec(name="echo", task="echo-test", path="-"))
        self.oom_above = oom_above
        self.batch_sizes: list[int] = []

    def setup(self) -> None:
        pass

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        if fields["text"] == "untokenisable":
            raise ValueError("cannot tokenise")
        if fields["text"] == "refused":
            raise ItemError("item refused: its message is stored as it is")
        words = fields["text"].split()
        # Two windows for long texts, to exercise combine().
        windows = [words[:5], words[5:]] if len(words) > 5 else [words]
        return [Feature(item=item, ids={"input_ids": [1] * len(w)}, length=len(w), meta={"w": w}) for w in windows]

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        return {"features": features}

    def forward(self, batch: dict[str, Any]) -> Any:
        features = batch["features"]
        self.batch_sizes.append(len(features))
        if len(features) > self.oom_above:
            raise MemoryError("out of memory")
        if any("boom" in f.meta["w"] for f in features):
            raise RuntimeError("poisoned")
        return [len(f.meta["w"]) for f in features]

    def postprocess(self, features: list[Feature], outputs: Any) -> list[Any]:
        return list(outputs)

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        return ItemResult(item=item, label="words", score=float(sum(partials)))


def _run(family: Echo, texts: list[str], **engine: Any) -> dict[int, ItemResult]:
    run = Engine(family, **{"max_batch_tokens": 1000, "max_batch_size": 64, **engine}).run
    return {r.item: r for results, _ in run(list(enumerate({"text": t} for t in texts))) for r in results}


def test_bad_item_fails_alone() -> None:
    texts = ["a b c", "x boom y", "untokenisable", "one two three four five six seven", "z"]
    out = _run(Echo(), texts)
    assert out[0].score == 3 and out[3].score == 7 and out[4].score == 1
    assert out[1].error == "RuntimeError: poisoned"
    assert out[2].error == "ValueError: cannot tokenise"


def test_out_of_memory_splits_the_batch() -> None:
    family = Echo(oom_above=4)
    out = _run(family, [f"w{i} x" for i in range(16)])
    assert all(r.error is None and r.score == 2 for r in out.values()) and len(out) == 16
    assert family.batch_sizes == [16, 8, 4, 4, 8, 4, 4]


def test_out_of_memory_backs_the_budget_off_and_replans_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    family = Echo(oom_above=4)
    budget = TokenBudget(1000, floor=1, recover_after=100)
    with caplog.at_level(logging.WARNING, logger="sluice.worker"):
        out = _run(family, [f"w{i} x" for i in range(48)], max_batch_size=16, budget=budget)
    assert len(out) == 48 and all(r.error is None for r in out.values())
    # The first batch of 16 splits down to 4s; the 32 left are re-planned as batches of 4
    # (8 padded tokens) instead of failing twice more at 16 and 8.
    assert family.batch_sizes == [16, 8, 4, 4, 8, 4, 4] + [4] * 8
    assert budget.current == 8
    assert "max_batch_tokens backs off 1000 -> 16" in caplog.text


def test_backed_off_budget_recovers_gradually_and_is_kept_across_chunks() -> None:
    family = Echo()
    budget = shared_budget(family, 16, floor=4, recover_after=2)
    assert shared_budget(family, 16, floor=4, recover_after=2) is budget  # the next chunk sees the back-off
    budget.back_off(16)
    _run(family, [f"w{i} x" for i in range(60)], max_batch_tokens=16, budget=budget)
    # 8 tokens (4 items), +25% every two good batches: 10, 12, 15, then the configured 16.
    assert family.batch_sizes == [4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert budget.current == 16
    assert shared_budget(family, 32, floor=4, recover_after=2).current == 32  # new settings, new budget


class Uncollatable(Echo):
    """Collating a batch that holds the word 'nocollate' raises."""

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        if any("nocollate" in f.meta["w"] for f in features):
            raise ValueError("cannot collate")
        return super().collate(features)


def test_item_that_cannot_be_collated_fails_alone() -> None:
    out = _run(Uncollatable(), ["a b", "c nocollate", "d e"], max_batch_size=8)
    assert out[1].error == "ValueError: cannot collate"
    assert out[0].score == 2 and out[2].score == 2


class BrokenBatch(Echo):
    """Batched preprocessing that raises: the engine must fall back to item by item, and say so."""

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        raise RuntimeError("batch tokeniser broke")


def test_batched_preprocessing_that_raises_falls_back_item_by_item_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sluice.worker"):
        out = _run(BrokenBatch(), ["a b", "untokenisable", "refused", "c"])
    assert out[0].score == 2 and out[3].score == 1
    assert out[1].error == "ValueError: cannot tokenise"
    assert out[2].error == "item refused: its message is stored as it is"
    assert "model echo (echo-test): preprocessing 4 items together raised RuntimeError: batch tokeniser broke" in (
        caplog.text
    )
