"""Commits results on a background thread while the next forward pass runs.

One writer thread per chunk, fed through a bounded queue: a slow database slows the engine
down (``put`` blocks) instead of piling a chunk's results up in memory. Results are acked to
Celery only after they are committed, so the caller must leave the ``with`` block (which waits for
every queued write) before closing a chunk, and the first write error is raised from ``put`` or
from the end of the block, never swallowed: the task fails instead of acking lost results.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from types import TracebackType

from sluice.families.base import ItemResult
from sluice.ledger import Ledger
from worker.hooks import Hooks

log = logging.getLogger("sluice.worker")

#: Batches of results that may wait for the database; two keep the thread busy without hoarding.
QUEUE_DEPTH = 2


def cap_artifacts(result: ItemResult, limit: int) -> ItemResult:
    """``result``, or an error in its place when its artifacts together pass ``limit`` bytes.

    An artifact is stored in one database row (PostgreSQL refuses a ``bytea`` over 1 GB, and a
    huge one stalls the writer's transaction for the whole batch): such an item fails alone, with
    what to change, instead of failing its batch or the chunk.
    """
    size = sum(len(a.data) for a in result.artifacts)
    if size <= limit:
        return result
    return ItemResult(
        item=result.item, n_tokens=result.n_tokens, compute_ms=result.compute_ms,
        error=f"ItemError: its artifacts hold {size:,} bytes, over SLUICE_MAX_ARTIFACT_BYTES ({limit:,}); "
        "send a smaller input or raise the limit",
    )  # fmt: skip


class ResultWriter:
    """Writes ``{job id: results}`` batches in order, each in its own transaction, off the caller's thread.

    After each write it checks whether ``watch_job`` was cancelled, so the database is not read
    on the forward-pass thread either; :attr:`cancelled` is what it last saw.
    """

    def __init__(
        self, ledger: Ledger, worker: str | None, watch_job: str, hooks: Hooks, model: str, depth: int = QUEUE_DEPTH
    ) -> None:
        self.ledger = ledger
        self.hooks = hooks
        self.model = model
        self.worker = worker
        self.watch_job = watch_job
        self.written = 0
        self.failed = 0
        self.cancelled = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[dict[str, list[ItemResult]] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._loop, name="sluice-writer", daemon=True)

    def __enter__(self) -> ResultWriter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is None or exc is self._error:
            return
        if exc is None:
            raise self._error
        log.error("result write failed while the chunk was failing anyway: %r", self._error)

    def put(self, results: dict[str, list[ItemResult]]) -> None:
        """Queue a batch for writing; blocks while the queue is full; raises an earlier write's error."""
        if self._error is not None:
            raise self._error
        self._queue.put(results)

    def _loop(self) -> None:
        while (results := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that put() never blocks on a dead writer
            try:
                if results:
                    started = time.perf_counter()
                    written = self.ledger.write_results(results, self.worker)
                    rows = sum(len(batch) for batch in results.values())
                    self.hooks.commit_timed(self.model, time.perf_counter() - started, rows)
                    self.written += written.done
                    self.failed += written.failed
                    self._announce(written.by_job, written.finished_jobs)
                self.cancelled = self.ledger.is_cancelled(self.watch_job)
            except BaseException as exc:  # handed to the caller's thread, which fails the task
                self._error = exc

    def _announce(self, by_job: dict[str, tuple[int, int]], finished: list[str]) -> None:
        if by_job:
            self.hooks.results_committed(self.model, by_job)
        if finished:
            self.hooks.job_finished(finished)
