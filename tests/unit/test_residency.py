"""LRU residency under a memory budget, with fake families (no weights), and the routing rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import torch

from sluice.clock import utcnow
from sluice.families.base import TaskFamily
from sluice.registry import ModelSpec, Registry
from sluice.routing import (
    WorkerRow,
    describe_worker,
    is_deployment_queue,
    model_queue,
    route,
    waiting_reason,
    worker_queues,
)
from sluice.sizes import format_size, parse_size
from sluice.status import WorkerStatus
from worker.engine import BatchStats
from worker.residency import Candidate, ModelPool, family_bytes, lru_victims


def c(name: str, size: int, used: float, pinned: bool = False) -> Candidate:
    return Candidate(name, size, used, pinned)


# the pure policy ---------------------------------------------------------------------------


def test_no_budget_never_evicts() -> None:
    assert lru_victims([c("a", 10**12, 1)], 10**12, None) == []


def test_evicts_least_recently_used_until_the_newcomer_fits() -> None:
    residents = [c("new", 100, 3), c("old", 100, 1), c("mid", 100, 2)]
    assert lru_victims(residents, 100, 400) == []
    assert lru_victims(residents, 100, 300) == ["old"]
    assert lru_victims(residents, 150, 300) == ["old", "mid"]


def test_pinned_models_never_leave_even_when_nothing_fits() -> None:
    residents = [c("pinned", 100, 0, pinned=True), c("a", 100, 1), c("b", 100, 2)]
    assert lru_victims(residents, 100, 250) == ["a", "b"]
    assert lru_victims(residents, 10**6, 250) == ["a", "b"]  # all unpinned go; the load happens anyway


# the pool with fake families ---------------------------------------------------------------


class FakeFamily(TaskFamily):
    task = "text-classification"
    released = 0

    def setup(self) -> None:
        self.size = int(self.spec.options["size"])

    def release(self) -> None:
        FakeFamily.released += 1

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> Any:
        raise NotImplementedError

    def postprocess(self, features: list[Any], outputs: Any) -> list[Any]:
        raise NotImplementedError


def fake_pool(sizes: dict[str, int], budget: int | None, estimate: int | None = None) -> tuple[ModelPool, list[str]]:
    specs = {n: ModelSpec(n, "text-classification", f"/nowhere/{n}", options={"size": s}) for n, s in sizes.items()}
    changes: list[str] = []
    pool = ModelPool(
        Registry(specs), "cpu", budget,
        load=lambda spec, device: _setup(FakeFamily(spec, device)),
        measure=lambda family: (family.size, "float32"),  # type: ignore[attr-defined]
        estimate=lambda spec: spec.options["size"] if estimate is None else estimate,
    )  # fmt: skip
    pool.on_change = lambda: changes.append(",".join(sorted(pool.loaded)))
    return pool, changes


def _setup(family: FakeFamily) -> FakeFamily:
    family.setup()
    return family


def test_pool_evicts_lru_keeps_pinned_and_reports_each_change() -> None:
    pool, changes = fake_pool({"p": 100, "a": 100, "b": 100}, budget=250)
    released = FakeFamily.released
    pool.preload(["p"])
    pool.get("a")
    pool.get("b")  # a is the only unpinned model: it goes
    assert sorted(pool.loaded) == ["b", "p"] and FakeFamily.released == released + 1
    pool.get("p")
    pool.get("a")  # b, not the just-used pinned p
    assert sorted(pool.loaded) == ["a", "p"]
    assert changes == ["p", "a,p", "p", "b,p", "p", "a,p"]  # every load and every eviction
    models, evictions = pool.snapshot()
    assert {m["model"]: m["pinned"] for m in models} == {"p": True, "a": False}
    assert {m["bytes"] for m in models} == {100}
    assert [(e["model"], e["for"]) for e in evictions] == [("a", "b"), ("b", "a")]


def test_recently_used_model_survives() -> None:
    pool, _ = fake_pool({"a": 100, "b": 100, "c": 100}, budget=250)
    pool.get("a")
    pool.get("b")
    pool.get("a")  # b is now the least recently used
    pool.get("c")
    assert sorted(pool.loaded) == ["a", "c"]


def test_short_estimate_is_corrected_after_the_load() -> None:
    pool, _ = fake_pool({"a": 200, "b": 200}, budget=300, estimate=0)
    pool.get("a")
    pool.get("b")  # estimated at 0 bytes, so a stayed for the load; measured 200, so a goes now
    assert sorted(pool.loaded) == ["b"] and pool.used_bytes == 200


def test_unlimited_pool_keeps_everything() -> None:
    pool, _ = fake_pool({"a": 10**10, "b": 10**10}, budget=None)
    pool.get("a")
    pool.get("b")
    assert sorted(pool.loaded) == ["a", "b"]


def test_family_bytes_counts_parameters_and_buffers_once() -> None:
    class Holder:
        def __init__(self) -> None:
            self.model = torch.nn.Linear(4, 3)  # 12 + 3 float32
            self.model.register_buffer("ids", torch.zeros(5, dtype=torch.int64))
            self.alias = self.model  # the same module twice counts once

    assert family_bytes(Holder()) == ((12 + 3) * 4 + 5 * 8, "float32")  # type: ignore[arg-type]


# sizes and routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "n"), [("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), ("512M", 512 * 2**20),
                                        ("250kB", 250_000), ("123", 123), (" 7 mb ", 7 * 10**6)])  # fmt: skip
def test_parse_size(raw: str, n: int) -> None:
    assert parse_size(raw) == n


@pytest.mark.parametrize("raw", ["", "GB", "2 parsecs", "-1", "0"])
def test_parse_size_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_size(raw)


def test_format_size_reads_back() -> None:
    assert format_size(2 * 10**9) == "2.0 GB" and parse_size(format_size(250_000)) == 250_000


def worker(name: str, queues: list[str], live: bool = True) -> WorkerRow:
    now = utcnow() - timedelta(seconds=1)
    return WorkerRow(name, 1, "cpu", tuple(queues), (), (), None, WorkerStatus.RUNNING, now, now, live)


def test_route_prefers_the_queue_of_a_live_preloading_worker() -> None:
    assert worker_queues("q", ["m1", "m2"]) == ["q.m1", "q.m2", "q"]
    fleet = [worker("a", worker_queues("q", ["m1"])), worker("dead", worker_queues("q", ["m2"]), live=False)]
    assert route("m1", fleet, "q") == model_queue("q", "m1") == "q.m1"
    assert route("m2", fleet, "q") == "q"  # its preloader is stale: the shared queue, loaded on demand
    assert route("m3", fleet, "q") == "q"


def test_waiting_reasons() -> None:
    dedicated = [worker("a@h", ["q.m1"])]
    assert waiting_reason("m1", {"q.m1"}, dedicated, "q") is None
    assert waiting_reason("m2", {"q"}, dedicated, "q") == (
        "waiting: no live worker serves model 'm2' (live workers: a@h reads q.m1; none consumes q.m2 or the shared "
        "queue q)"
    )
    assert "no live worker serves model 'm1'" in waiting_reason("m1", {"q.m1"}, [], "q")  # type: ignore[operator]
    stranded = waiting_reason("m2", {"q.m2"}, [worker("b@h", ["q"])], "q")
    assert stranded is not None and "`sluice reconcile` re-routes them to q" in stranded
    assert waiting_reason("m2", {None}, [worker("b@h", ["q"])], "q").endswith("`sluice reconcile` sends them")  # type: ignore[union-attr]


def test_forward_work_is_totalled_per_model_and_printed_as_padding_efficiency() -> None:
    pool, _ = fake_pool({"a": 100}, budget=None)
    pool.get("a")
    pool.record("a", BatchStats(features=3, real_tokens=90, padded_tokens=100, forward_s=0.5))
    pool.record("a", BatchStats(features=1, real_tokens=10, padded_tokens=25, forward_s=0.25))
    pool.record("gone", BatchStats(features=1, real_tokens=1, padded_tokens=1))  # evicted meanwhile: ignored
    (model,), _ = pool.snapshot()
    assert (model["features"], model["real_tokens"], model["padded_tokens"], model["forward_s"]) == (4, 100, 125, 0.75)
    row = worker("w@h", ["sluice"], live=True)
    text = describe_worker(replace(row, models=(model,)))
    assert "4 inputs in 0.8s of forward passes, padding efficiency 0.800 (real / padded tokens)" in text


def test_weights_a_run_loads_count_and_can_send_others_out() -> None:
    """A generation family loads its assistant model on first use: the pool measures after each run."""
    pool, changes = fake_pool({"a": 100, "main": 100}, budget=250)
    pool.get("a")
    family = pool.get("main")
    family.size = 180  # type: ignore[attr-defined]  # its assistant came in during the run
    pool.record("main", BatchStats())
    assert sorted(pool.loaded) == ["main"] and pool.used_bytes == 180  # a was least recently used
    assert changes[-2:] == ["main", "main"]  # the eviction, then the new size
    pool.record("main", BatchStats())  # no change: nothing reported
    assert len(changes) == 4


def test_family_bytes_counts_modules_kept_by_name() -> None:
    class Generation:
        def __init__(self) -> None:
            self.model = torch.nn.Linear(4, 3)  # 15 float32
            self.assistants = {"small": (torch.nn.Linear(2, 2), {"config": 1})}  # 6 float32, with its config

    assert family_bytes(Generation()) == ((15 + 6) * 4, "float32")  # type: ignore[arg-type]


def test_a_deployment_judges_only_its_own_queues() -> None:
    assert is_deployment_queue("sluice", "sluice") and is_deployment_queue("sluice.minilm", "sluice")
    assert not is_deployment_queue("sluice-eu.minilm", "sluice") and not is_deployment_queue("other", "sluice")
