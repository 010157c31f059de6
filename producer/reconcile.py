"""Re-enqueue work from the database, the source of truth, so a lost message loses nothing.

A chunk is resent when its lease expired (its worker died or Redis dropped the message while
running), when it was never enqueued (the producer died between commit and send), or when it
waits on a model's queue that no live worker reads any more (the worker preloading that model
stopped) while another queue now serves the model: it is re-routed there. With
``include_queued`` every chunk not yet started is resent too: the recovery step after Redis
itself was flushed. Resending is safe: results are written only for items still pending, and a
message that arrives for a finished chunk is acked without work.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, select, true

from producer.client import Client
from sluice.db import Chunk, Job, utcnow
from sluice.routing import consumed, route
from sluice.settings import Settings
from sluice.status import ChunkStatus, JobStatus


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


def reconcile(settings: Settings, include_queued: bool = False) -> int:
    client = Client(settings)
    stale = stale_chunks(client, include_queued)
    for (job_id, priority), chunks in stale.items():
        client.enqueue(job_id, chunks, priority)
    return sum(len(c) for c in stale.values())
