"""The batching loop with a stand-in family: failure isolation and out-of-memory splitting."""

from __future__ import annotations

from typing import Any

from sluice.registry import ModelSpec
from worker.engine import Engine
from worker.families.base import Feature, ItemResult, TaskFamily


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


def _run(family: Echo, texts: list[str]) -> dict[int, ItemResult]:
    engine = Engine(family, max_batch_tokens=1000, max_batch_size=64)
    return {r.item: r for results, _ in engine.run(list(enumerate({"text": t} for t in texts))) for r in results}


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
