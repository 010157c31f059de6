"""Celery glue: the one task that turns a chunk message into stored results.

Messages carry references (job id, chunk index), never documents. :func:`register` binds the
task to the worker's own Celery app (built from the worker's settings) and to the process's
runtime, so nothing here is a module global.

A message that can never be a valid chunk reference is dropped once, never requeued: the task's
``Strategy`` (:func:`worker.messages.chunk_strategy`) dead-letters it before Celery builds a
request, and :func:`run_chunk` checks the arguments again before any work (for callers that do
not go through a worker). Only failures that may pass (a commit that did not go through, the
database unreachable) are requeued.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery import Celery
from celery.exceptions import Reject

from sluice.celery_app import PROCESS_CHUNK
from sluice.logs import log_context
from worker.messages import chunk_ref_problem, drop

log = logging.getLogger("sluice.worker")


class ChunkRunner(Protocol):
    def process_chunk(self, job_id: str, idx: int) -> Any: ...


def run_chunk(runtime: ChunkRunner, job_id: str, idx: int) -> dict[str, object]:
    """Run one chunk message; a failure rejects it with requeue instead of acking it as done.

    Arguments that cannot name a chunk are dropped (counted, logged, acked) before any work.
    """
    problem = chunk_ref_problem((job_id, idx), {})
    if problem is not None:
        drop("?", problem, [job_id, idx])  # a worker's strategy dead-letters these first
        return {"written": 0, "failed": 0, "skipped": True, "dropped": problem.reason}
    try:
        report = runtime.process_chunk(job_id, idx)
    except Exception as exc:
        # Celery acks a failed task; requeue instead, so a transient failure (a commit that did not
        # go through) is retried at once. The delivery counter bounds a chunk that always fails.
        log.exception("chunk %s/%s failed; requeued", job_id, idx)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc
    if report.skipped:  # a coalesced chunk's own message, or a duplicate: common, not news
        log.debug("chunk %s/%s: nothing to do (done, or held by a live lease)", job_id, idx)
        return {"written": 0, "failed": 0, "skipped": True}
    stats = report.stats
    log.info(
        "chunk %s/%s: %d done, %d failed%s",
        job_id, idx, report.written, report.failed,
        f", padding efficiency {stats.padding_efficiency:.2f}" if stats and stats.features else "",
    )  # fmt: skip
    return {"written": report.written, "failed": report.failed, "skipped": report.skipped}


def register(app: Celery, runtime: ChunkRunner) -> Any:
    """Register the chunk task on ``app``, running on ``runtime``; returns the task."""

    @app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_CHUNK, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
        Strategy="worker.messages:chunk_strategy",
    )  # fmt: skip
    def process_chunk(job_id: str, idx: int) -> dict[str, object]:
        with log_context(job=job_id, chunk=idx):  # JSON log lines carry them (SLUICE_LOG_FORMAT=json)
            return run_chunk(runtime, job_id, idx)

    return process_chunk
