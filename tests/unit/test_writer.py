"""The result writer: writes overlap the caller, every write is waited for, errors are raised."""

from __future__ import annotations

import threading

import pytest

from sluice.families.base import Artifact, ItemResult
from sluice.ledger import Written
from sluice.settings import Settings
from worker.hooks import Hooks
from worker.writer import ResultWriter, cap_artifacts


class FakeStore:
    """Counts written rows; a write can be held back, fail, or see the job cancelled."""

    def __init__(self, fail_on: int = -1, cancel_after: int = 10**9) -> None:
        self.release = threading.Event()
        self.release.set()
        self.writes: list[dict[str, list[ItemResult]]] = []
        self.fail_on = fail_on
        self.cancel_after = cancel_after

    def write_results(self, results: dict[str, list[ItemResult]], worker: str | None) -> Written:
        assert self.release.wait(timeout=30)
        if len(self.writes) == self.fail_on:
            raise ConnectionError("database went away")
        self.writes.append(results)
        rows = [r for batch in results.values() for r in batch]
        return Written({"job": (sum(r.error is None for r in rows), sum(r.error is not None for r in rows))})

    def is_cancelled(self, job_id: str) -> bool:
        return len(self.writes) >= self.cancel_after


def _batch(*items: int, error: str | None = None) -> dict[str, list[ItemResult]]:
    return {"job": [ItemResult(item=i, error=error) for i in items]}


def _writer(store: FakeStore) -> ResultWriter:
    return ResultWriter(store, "w1", "job", Hooks(Settings()), "model")  # type: ignore[arg-type]


def test_put_returns_before_the_write_and_the_block_waits_for_every_write() -> None:
    store = FakeStore()
    store.release.clear()  # the database is slow: nothing is written yet
    with _writer(store) as writer:
        writer.put(_batch(0, 1))
        writer.put(_batch(2, error="bad"))
        assert store.writes == []  # put() did not wait for the database
        store.release.set()
    assert [sorted(r.item for r in w["job"]) for w in store.writes] == [[0, 1], [2]]
    assert (writer.written, writer.failed) == (2, 1)


def test_a_write_error_fails_the_chunk_instead_of_being_swallowed() -> None:
    store = FakeStore(fail_on=1)
    with pytest.raises(ConnectionError), _writer(store) as writer:
        for i in range(5):
            writer.put(_batch(i))
    assert len(store.writes) == 1


def test_an_error_in_the_caller_still_waits_for_queued_writes() -> None:
    store = FakeStore()
    with pytest.raises(RuntimeError, match="engine"), _writer(store) as writer:
        writer.put(_batch(0))
        raise RuntimeError("engine bug")
    assert len(store.writes) == 1


def test_cancellation_is_checked_after_every_write() -> None:
    store = FakeStore(cancel_after=2)
    with _writer(store) as writer:
        writer.put(_batch(0))
        writer.put({})  # a batch that completed no item still checks
    assert not writer.cancelled
    with _writer(store) as writer:
        writer.put(_batch(1))
    assert writer.cancelled and len(store.writes) == 2


def test_an_item_whose_artifacts_pass_the_cap_fails_alone_with_what_to_change() -> None:
    small = ItemResult(
        item=3, output={"n": 1}, artifacts=[Artifact("audio/wav", b"x" * 60), Artifact("image/png", b"y" * 40)]
    )
    assert cap_artifacts(small, 100) is small  # 100 bytes in all: at the cap, kept
    big = cap_artifacts(small, 99)
    assert (big.item, big.output, big.artifacts) == (3, None, [])
    assert big.error == (
        "ItemError: its artifacts hold 100 bytes, over SLUICE_MAX_ARTIFACT_BYTES (99); "
        "send a smaller input or raise the limit"
    )
    plain = ItemResult(item=4, label="x", score=1.0)
    assert cap_artifacts(plain, 1) is plain
