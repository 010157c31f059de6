"""Re-enqueue work from the database, the source of truth, so a lost message loses nothing.

A chunk is resent when its lease expired (its worker died or Redis dropped the message while
running), when it was never enqueued (the producer died between commit and send), or when it
waits on a model's queue that no live worker reads any more (the worker preloading that model
stopped) while another queue now serves the model: it is re-routed there. With
``include_queued`` every chunk not yet started is resent too: the recovery step after Redis
itself was flushed. Resending is safe: results are written only for items still pending, and a
message that arrives for a finished chunk is acked without work.

A chunk leased by a worker that is gone (its heartbeat went stale, or it stopped) goes back to
the queue at once instead of waiting for the lease to expire; so do the chunks a restarted
worker's previous incarnation held, when the new process starts under the same node name.
``sluice reconcile --every N`` (the Compose ``beat`` service) repeats all this periodically.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import and_, or_, select, true, update

from producer.client import Client
from sluice.db import Chunk, Job, utcnow
from sluice.routing import consumed, load_workers, route
from sluice.settings import Settings
from sluice.status import ChunkStatus, JobStatus

log = logging.getLogger("sluice.reconcile")


def stale_chunks(client: Client, include_queued: bool = False) -> dict[tuple[str, int], list[int]]:
    """(job id, priority) → chunk indices that should be sent again."""
    expired = utcnow() - timedelta(seconds=client.settings.lease_seconds)
    cond = [
        and_(Chunk.status == ChunkStatus.RUNNING.value, Chunk.leased_at < expired),
        and_(Chunk.status == ChunkStatus.QUEUED.value, Chunk.enqueued_at.is_(None)),
    ]
    workers = client.workers()
    reading = consumed(workers)
    if include_queued:
        cond.append(Chunk.status == ChunkStatus.QUEUED.value)
    else:  # stranded: on a queue nobody reads; resent only where it would now be read
        cond.append(and_(Chunk.status == ChunkStatus.QUEUED.value, Chunk.queue.is_not(None),
                         Chunk.queue.not_in(reading) if reading else true()))  # fmt: skip
    query = (
        select(Chunk.job_id, Job.priority, Job.model, Chunk.idx, Chunk.queue, Chunk.status)
        .join(Job, Job.id == Chunk.job_id)
        .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]), or_(*cond))
        .order_by(Chunk.job_id, Chunk.idx)
    )
    found: dict[tuple[str, int], list[int]] = {}
    with client.engine.connect() as conn:
        for job_id, priority, model, idx, queue, status in conn.execute(query):
            stranded = status == ChunkStatus.QUEUED.value and queue is not None and queue not in reading
            if stranded and not include_queued and route(model, workers, client.settings.queue) not in reading:
                continue  # no queue serves the model now either: resending would only duplicate messages
            found.setdefault((job_id, priority), []).append(idx)
    return found


def requeue_held_by(client: Client, hostnames: list[str]) -> int:
    """Put the running chunks leased by these (gone) workers back on the queue; how many.

    The lease is dropped so the next delivery can claim the chunk at once. Should a holder still
    be alive after all, nothing is lost or doubled: it writes only still-pending items and can
    no longer close the chunk.
    """
    if not hostnames:
        return 0
    active = select(Job.id).where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
    # Chunks of ended jobs stay as they are: nothing would send them again.
    held = and_(Chunk.status == ChunkStatus.RUNNING.value, Chunk.leased_by.in_(hostnames), Chunk.job_id.in_(active))
    with client.engine.begin() as conn:
        rows = conn.execute(select(Chunk.job_id, Chunk.idx, Job.priority, Job.model)
                            .join(Job, Job.id == Chunk.job_id).where(held)).all()  # fmt: skip
        conn.execute(update(Chunk.__table__).where(held).values(
            status=ChunkStatus.QUEUED.value, lease=None, leased_at=None, leased_by=None))  # fmt: skip
    by_job: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for job_id, idx, priority, model in rows:
        by_job[(job_id, priority, model)].append(idx)
    for (job_id, priority, model), chunks in by_job.items():
        log.warning("job %s: chunks %s were held by %s, now gone; re-enqueued", job_id, chunks, ", ".join(hostnames))
        client.enqueue(job_id, chunks, priority, model)
    return len(rows)


def reclaim_own(settings: Settings, hostname: str, client: Client | None = None) -> int:
    """At worker start: re-enqueue what this node name's previous process held when it died.

    Skipped when another live process on this machine still reports under the same name (two
    workers misconfigured with one name must not take each other's chunks).
    """
    client = client or Client(settings)
    row = next((w for w in load_workers(client.engine, settings.heartbeat_seconds, True) if w.hostname == hostname),
               None)  # fmt: skip
    if row is None:
        return 0
    if row.live and row.pid != os.getpid() and _pid_alive(row.pid):
        log.warning("another live process (pid %d) reports as %s; not reclaiming its chunks", row.pid, hostname)
        return 0
    return requeue_held_by(client, [hostname])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def reconcile(settings: Settings, include_queued: bool = False, client: Client | None = None) -> int:
    """One pass: chunks of gone workers, expired leases, never-sent and stranded chunks; how many were resent."""
    client = client or Client(settings)
    gone = [w.hostname for w in load_workers(client.engine, settings.heartbeat_seconds, True) if not w.live]
    requeued = requeue_held_by(client, gone)
    stale = stale_chunks(client, include_queued)
    for (job_id, priority), chunks in stale.items():
        client.enqueue(job_id, chunks, priority)
    return requeued + sum(len(c) for c in stale.values())


def reconcile_every(settings: Settings, seconds: float) -> None:
    """Reconcile forever, every ``seconds``; a failed pass is logged and the next one tries again."""
    while True:
        try:
            if n := reconcile(settings):
                log.info("re-enqueued %d chunk(s)", n)
        except Exception:  # the database or Redis is down for a moment: keep going
            log.exception("reconcile pass failed")
        time.sleep(seconds)
