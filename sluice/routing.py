"""Which Redis queue a job's chunks go to, and whether any live worker is there to take them.

Every model has its own queue, ``<SLUICE_QUEUE>.<model>``, consumed by the workers that preload
it; the shared queue ``SLUICE_QUEUE`` is consumed by every worker (unless ``--queues`` says
otherwise) and carries jobs for models nobody preloads, which a worker then loads on demand. The
producer picks the model's queue only while some live worker consumes it, so a job never waits
on a queue nobody reads; workers learn nothing from this module but their queue names.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sluice.clock import as_utc, utcnow
from sluice.sizes import format_size
from sluice.status import WorkerStatus

STALE_AFTER_BEATS = 3  # a worker that missed this many heartbeats is presumed gone
_LISTED = 5  # live workers named in a waiting reason


def model_queue(shared: str, model: str) -> str:
    """The queue of one model's chunks: ``sluice.minilm`` for shared queue ``sluice``."""
    return f"{shared}.{model}"


def is_deployment_queue(queue: str, shared: str) -> bool:
    """Whether ``queue`` is one of the deployment's whose shared queue is ``shared`` (it, or a model's).

    Deployments may share a database, each with its own queue name (and perhaps its own Redis):
    what one deployment reads from Redis says nothing about another's queues.
    """
    return queue == shared or queue.startswith(shared + ".")


def worker_queues(shared: str, preload: Iterable[str]) -> list[str]:
    """What a worker consumes: its preloaded models' queues first, then the shared queue."""
    return [*(model_queue(shared, m) for m in preload), shared]


@dataclass(frozen=True)
class WorkerRow:
    """A row of the ``workers`` table, with liveness judged against the heartbeat interval."""

    hostname: str
    pid: int
    device: str
    queues: tuple[str, ...]
    models: tuple[dict[str, Any], ...]
    evictions: tuple[dict[str, Any], ...]
    memory_budget: int | None
    status: WorkerStatus
    started_at: datetime
    heartbeat_at: datetime
    live: bool
    #: ``host:port`` of its /metrics endpoint, if it serves one
    metrics: str | None = None

    @property
    def heartbeat_age_s(self) -> float:
        return (utcnow() - self.heartbeat_at).total_seconds()

    @property
    def memory_used(self) -> int:
        return sum(int(m.get("bytes") or 0) for m in self.models)


def consumed(workers: Iterable[WorkerRow]) -> set[str]:
    """Queues some live worker reads."""
    return {q for w in workers if w.live for q in w.queues}


def route(model: str, workers: Iterable[WorkerRow], shared: str) -> str:
    """The model's own queue while a live worker consumes it (it preloads the model), else the shared one."""
    own = model_queue(shared, model)
    return own if own in consumed(workers) else shared


def waiting_reason(model: str, queues: Collection[str | None], workers: list[WorkerRow], shared: str) -> str | None:
    """Why queued chunks (on ``queues``; None = never sent) will not be picked up; None if some will be."""
    live = [w for w in workers if w.live]
    reading = consumed(live)
    sent = {q for q in queues if q}
    if not queues or sent & reading:
        return None
    if not live:
        return f"waiting: no live worker serves model {model!r} (no worker has a fresh heartbeat); start one"
    named = "; ".join(f"{w.hostname} reads {', '.join(w.queues)}" for w in live[:_LISTED])
    named += f"; and {len(live) - _LISTED} more" if len(live) > _LISTED else ""
    target = route(model, live, shared)
    if not sent:
        return f"waiting: its chunks were never sent to Redis (live workers: {named}); `sluice reconcile` sends them"
    if target in reading:
        where = ", ".join(sorted(sent))
        return (f"waiting: its chunks are on {where}, which no live worker consumes any more (live workers: {named}); "
                f"`sluice reconcile` re-routes them to {target}")  # fmt: skip
    return (f"waiting: no live worker serves model {model!r} (live workers: {named}; "
            f"none consumes {model_queue(shared, model)} or the shared queue {shared})")  # fmt: skip


def _ago(stamp: str | datetime | None) -> str:
    if stamp is None:
        return "-"
    when = as_utc(datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp)
    return f"{(utcnow() - when).total_seconds():.0f}s ago"


def describe_worker(w: WorkerRow) -> str:
    """Several lines about one worker, as ``sluice workers`` prints them."""
    state = w.status.value if w.live or w.status is WorkerStatus.STOPPED else f"stale (last {w.status.value})"
    budget = format_size(w.memory_budget) if w.memory_budget else "no limit"
    lines = [
        f"{w.hostname}  {state}  device={w.device}  pid={w.pid}  heartbeat {_ago(w.heartbeat_at)}  "
        f"memory {format_size(w.memory_used)} / {budget}",
        f"  queues: {', '.join(w.queues)}",
    ]
    if w.metrics:
        lines.append(f"  metrics: http://{w.metrics}/metrics")
    for m in w.models:
        pinned = ", pinned" if m.get("pinned") else ""
        lines.append(f"  model {m['model']} ({m.get('task')}, {m.get('dtype')}, {format_size(m.get('bytes'))}"
                     f"{pinned}), last used {_ago(m.get('last_used'))}")  # fmt: skip
        if m.get("padded_tokens"):
            efficiency = m["real_tokens"] / m["padded_tokens"]
            lines.append(f"    {m['features']} inputs in {m['forward_s']:.1f}s of forward passes, "
                         f"padding efficiency {efficiency:.3f} (real / padded tokens)")  # fmt: skip
    if not w.models:
        lines.append("  no models resident")
    for e in w.evictions[-3:]:
        lines.append(f"  evicted {e['model']} ({format_size(e.get('bytes'))}) for {e.get('for')} "
                     f"{_ago(e.get('evicted_at'))}")  # fmt: skip
    if len(w.evictions) > 3:
        lines.append(f"  ... {len(w.evictions)} recent evictions in all")
    return "\n".join(lines)
