"""Celery glue: the one task that turns a chunk message into stored results.

Messages carry references (job id, chunk index), never documents. The runtime is created once
per worker process by :func:`init_runtime` before the worker starts consuming.
"""

from __future__ import annotations

import logging

from celery.exceptions import Reject

from sluice.celery_app import PROCESS_CHUNK, app
from worker.runtime import WorkerRuntime

log = logging.getLogger("sluice.worker")
_runtime: WorkerRuntime | None = None


def init_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    _runtime = runtime


@app.task(name=PROCESS_CHUNK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def process_chunk(job_id: str, idx: int) -> dict[str, object]:
    if _runtime is None:
        raise RuntimeError("worker runtime not initialised; start workers with `sluice worker`")
    try:
        report = _runtime.process_chunk(job_id, idx)
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
