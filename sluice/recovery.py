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
worker's previous incarnation held, when the new process starts under the same node name. A
chunk message a worker received and died holding before it claimed the chunk is given back from
Redis's unacked set (:mod:`sluice.unacked`) by every worker start and every reconcile pass, and
a queued chunk whose message is gone from an empty queue is sent again by every reconcile pass;
both are also done by the workers themselves, one of them per heartbeat interval (:func:`heal`).
``sluice reconcile --every N`` (the Compose ``beat`` service) repeats all this periodically, and
delivers due job callbacks (:mod:`sluice.webhooks`) on a thread of its own.

This lives in the core because both workers (``reclaim_own`` at start) and the shell run it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

from sluice.dispatch import Dispatcher
from sluice.routing import STALE_AFTER_BEATS, consumed, is_deployment_queue, route
from sluice.status import ChunkStatus
from sluice.unacked import CLAIM_GRACE_S
from sluice.webhooks import start_deliverer

log = logging.getLogger("sluice.reconcile")


def stale_chunks(dispatcher: Dispatcher, include_queued: bool = False) -> dict[tuple[str, int], list[int]]:
    """(job id, priority) → chunk indices that should be sent again."""
    workers = dispatcher.workers()
    reading = consumed(workers)
    found: dict[tuple[str, int], list[int]] = {}
    for c in dispatcher.ledger.resend_candidates(reading, include_queued):
        stranded = c.status == ChunkStatus.QUEUED and c.queue is not None and c.queue not in reading
        if stranded and not include_queued and route(c.model, workers, dispatcher.settings.queue) not in reading:
            continue  # no queue serves the model now either: resending would only duplicate messages
        found.setdefault((c.job_id, c.priority), []).append(c.idx)
    return found


def orphaned_chunks(dispatcher: Dispatcher, older_than: float = CLAIM_GRACE_S) -> dict[tuple[str, int], list[int]]:
    """(job id, priority) → queued chunks whose message is gone, to be re-sent (each job logged):
    sent ``older_than`` seconds ago or more to a queue that is now empty, and held unacked by no worker.

    Nothing else finds these: Redis evicted the queue under ``maxmemory`` (an ``allkeys-*`` policy),
    someone deleted the key, or a worker was killed in the instant between popping the message and
    recording it unacked. Only empty queues are looked at (a few ``LLEN``s per queue): a chunk
    behind others waits its turn, and is found once its queue drains. Only this deployment's
    queues: another one sharing the database may keep its messages in another Redis.
    """
    shared = dispatcher.settings.queue
    mine = [q for q in sorted(dispatcher.ledger.waiting_queues(older_than)) if is_deployment_queue(q, shared)]
    empty = [q for q in mine if dispatcher.queue_size(q) == 0]
    if not empty:
        return {}
    held = {(d.job_id, d.idx) for d in dispatcher.unacked_chunks(0)}
    found: dict[tuple[str, int], list[int]] = {}
    for c in dispatcher.ledger.queued_on(empty, older_than):
        if (c.job_id, c.idx) not in held:
            found.setdefault((c.job_id, c.priority), []).append(c.idx)
    for (job_id, _), chunks in found.items():
        log.warning("job %s: chunks %s wait on an empty queue and no worker holds them; re-sent", job_id, chunks)
    return found


def heal(dispatcher: Dispatcher, every: float) -> int:
    """What a lost message needs, done by one caller per ``every`` seconds in the deployment: give
    back deliveries whose worker died before claiming (:func:`restore_unclaimed`) and re-send
    :func:`orphaned_chunks`; how many. Workers call it on their heartbeat, so a message lost with
    a killed worker comes back without a reconcile process, and whether or not the worker restarts."""
    if not dispatcher.take_turn("heal", every):
        return 0
    healed = restore_unclaimed(dispatcher)
    for (job_id, priority), chunks in orphaned_chunks(dispatcher).items():
        dispatcher.enqueue(job_id, chunks, priority)
        healed += len(chunks)
    return healed


def requeue_held_by(dispatcher: Dispatcher, hostnames: list[str]) -> set[tuple[str, int]]:
    """Put the running chunks leased by these (gone) workers back on the queue; returns them.

    The lease is dropped so the next delivery can claim the chunk at once. Should a holder still
    be alive after all, nothing is lost or doubled: it writes only still-pending items and can
    no longer close the chunk.
    """
    rows = dispatcher.ledger.release_held_by(hostnames)
    by_job: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for c in rows:
        by_job[c.job_id, c.priority, c.model].append(c.idx)
    for (job_id, priority, model), chunks in by_job.items():
        log.warning("job %s: chunks %s were held by %s, now gone; re-enqueued", job_id, chunks, ", ".join(hostnames))
        dispatcher.enqueue(job_id, chunks, priority, model)
    return {(c.job_id, c.idx) for c in rows}


def restore_unclaimed(dispatcher: Dispatcher, older_than: float = CLAIM_GRACE_S) -> int:
    """Give back the chunk messages delivered ``older_than`` seconds ago or more whose chunk is still
    queued: their worker died between receiving and claiming. Returns how many."""
    found = dispatcher.unacked_chunks(older_than)
    queued = dispatcher.ledger.queued_among({(d.job_id, d.idx) for d in found})
    lost = [d for d in found if (d.job_id, d.idx) in queued]
    for d in lost:
        log.warning("job %s: chunk %d was delivered %.0fs ago to a worker that never claimed it; given back",
                    d.job_id, d.idx, time.time() - d.delivered_at)  # fmt: skip
    dispatcher.restore(lost)
    return len(lost)


def reclaim_own(dispatcher: Dispatcher, hostname: str) -> int:
    """At worker start: re-enqueue what this node name's previous process held when it died, and
    give back messages some worker died holding unclaimed (the killed predecessor's, most likely).

    The held chunks are skipped when another live process on this machine still reports under the
    same name (two workers misconfigured with one name must not take each other's chunks).
    """
    restored = restore_unclaimed(dispatcher)  # before the release below queues the held chunks
    row = next((w for w in dispatcher.ledger.load_workers(include_stale=True) if w.hostname == hostname), None)
    if row is None:
        return restored
    if row.live and row.pid != os.getpid() and _pid_alive(row.pid):
        log.warning("another live process (pid %d) reports as %s; not reclaiming its chunks", row.pid, hostname)
        return restored
    return restored + len(requeue_held_by(dispatcher, [hostname]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def reconcile(dispatcher: Dispatcher, include_queued: bool = False, judge_workers: bool = True) -> int:
    """One pass: chunks of gone workers, expired leases, never-sent and stranded chunks; how many were resent.

    When Redis lost its messages (its epoch marker is gone), every chunk not yet started is
    re-sent too, as ``include_queued`` asks for explicitly. Without ``judge_workers`` no worker
    is taken for gone (right after a database outage every heartbeat looks stale).
    """
    lost = dispatcher.broker_lost_messages()
    restored = restore_unclaimed(dispatcher)  # first: the release below queues held chunks again
    workers = dispatcher.ledger.load_workers(include_stale=True) if judge_workers else []
    requeued = requeue_held_by(dispatcher, [w.hostname for w in workers if not w.live])
    if lost and not include_queued:
        log.warning("the broker lost its messages (or this is the first reconcile): re-sending every queued chunk")
        include_queued = True
    stale = stale_chunks(dispatcher, include_queued)
    for key, chunks in ({} if include_queued else orphaned_chunks(dispatcher)).items():
        stale[key] = sorted(set(stale.get(key, [])) | set(chunks))
    sent = 0
    for (job_id, priority), chunks in stale.items():
        if fresh := [idx for idx in chunks if (job_id, idx) not in requeued]:
            dispatcher.enqueue(job_id, fresh, priority)
            sent += len(fresh)
    return restored + len(requeued) + sent


def reconcile_every(dispatcher: Dispatcher, seconds: float, debug: bool = False) -> None:
    """Reconcile forever, every ``seconds``; a failed pass is logged and the next one tries again.

    After a pass fails (the database or Redis was unreachable), workers are not judged gone until
    they have had ``STALE_AFTER_BEATS`` heartbeats to report again: during an outage that hit
    everyone, every heartbeat went stale, and a live worker's chunk must not be charged a lost run.
    """
    grace = STALE_AFTER_BEATS * dispatcher.settings.heartbeat_seconds
    judge_from = time.monotonic()
    # Job callbacks whose worker died, retries, and callbacks of cancelled jobs go out from here
    # too (SLUICE_WEBHOOK_SECRET set), on a thread of their own: a slow receiver never delays a pass.
    if dispatcher.settings.webhook_secret is not None:
        start_deliverer(dispatcher.ledger, dispatcher.settings)
    while True:
        try:
            if n := reconcile(dispatcher, judge_workers=time.monotonic() >= judge_from):
                log.info("re-enqueued %d chunk(s)", n)
        except Exception as exc:  # the database or Redis is down for a moment: keep going
            judge_from = time.monotonic() + grace
            if debug:
                log.exception("reconcile pass failed")
            else:
                log.error("reconcile pass failed: %s", exc)
        time.sleep(seconds)
