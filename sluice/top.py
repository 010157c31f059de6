"""``sluice top``: a live terminal view of the deployment, drawn with rich.

It reads what the exporter reads (:func:`sluice.cluster.take_snapshot`: the database and Redis)
once a second: workers with their device, resident models, the chunk in hand and items/s; jobs
running and queued with a progress bar and an ETA, then the last few that ended (read every
:data:`FINISHED_EVERY` seconds: that read sorts the jobs table); and the depth of every queue. ``--once``
prints one frame and exits (for scripts); Ctrl-C leaves the live view cleanly.

A worker's items/s is the change of its forward-pass input count between two heartbeats (its
row is rewritten every ``SLUICE_HEARTBEAT_SECONDS``); before two heartbeats have been seen (always
with ``--once``) it is the average since its models loaded, shown as ``~N``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sluice.clock import as_utc, utcnow
from sluice.cluster import Snapshot, broker_client, take_snapshot
from sluice.ledger import JobInfo, Ledger
from sluice.routing import WorkerRow
from sluice.settings import Settings
from sluice.sizes import format_size

#: Active jobs shown, running first; then the jobs that ended last.
JOBS_SHOWN = 20
FINISHED_SHOWN = 5
FINISHED_EVERY = 10.0
#: Width of a frame printed by ``--once`` when stdout is not a terminal (and COLUMNS is unset).
ONCE_WIDTH = 160


class Rates:
    """Items/s per worker from the change in its input count between two heartbeats."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[datetime, int]] = {}
        self._rates: dict[str, float] = {}

    def rate(self, w: WorkerRow) -> str:
        count = sum(int(m.get("features") or 0) for m in w.models)
        before = self._seen.get(w.hostname)
        if before is None or before[1] > count:  # first sight, or a restart reset its counts
            self._seen[w.hostname] = (w.heartbeat_at, count)
        elif w.heartbeat_at > before[0]:
            seconds = (w.heartbeat_at - before[0]).total_seconds()
            self._rates[w.hostname] = (count - before[1]) / seconds
            self._seen[w.hostname] = (w.heartbeat_at, count)
        if w.hostname in self._rates:
            return f"{self._rates[w.hostname]:.1f}"
        return _average(w, count)


def _average(w: WorkerRow, count: int) -> str:
    loaded = [datetime.fromisoformat(m["loaded_at"]) for m in w.models if m.get("loaded_at")]
    if not loaded or not count:
        return "-"
    seconds = (w.heartbeat_at - as_utc(min(loaded))).total_seconds()
    return f"~{count / seconds:.1f}" if seconds > 0 else "-"


def render(snap: Snapshot, rates: Rates, jobs: list[JobInfo], settings: Settings, ended: int = 0) -> Group:
    """One frame: a header line, then the workers, jobs (the last ``ended`` of them finished) and queues."""
    return Group(_header(snap), _workers(snap, rates), _jobs(jobs, ended), _queues(snap, settings))


def _header(snap: Snapshot) -> Text:
    text = Text(f"sluice top  {utcnow():%Y-%m-%d %H:%M:%S} UTC  ", style="bold")
    for source in ("database", "broker"):
        problem = snap.errors.get(source)
        text.append(f"{source} {'DOWN' if problem else 'ok'}  ", style="red" if problem else "green")
    if snap.stats is not None:
        jobs = " ".join(f"{k}={v}" for k, v in sorted(snap.stats.jobs.items()) if v)
        items = " ".join(f"{k}={v}" for k, v in sorted(snap.stats.items.items()))
        text.append(f"jobs: {jobs or 'none'}  items: {items}  oldest queued chunk {snap.oldest_queued_age():.0f}s")
    return text


def _workers(snap: Snapshot, rates: Rates) -> Table:
    table = Table(title=f"workers ({len(snap.live_workers)} live)", title_justify="left", expand=True)
    table.add_column("worker", no_wrap=True)
    for column in ("device", "status", "resident models", "current chunk", "items/s", "heartbeat"):
        table.add_column(column, overflow="fold")
    held: dict[str, list[str]] = {}
    for c in snap.running:
        held.setdefault(c.worker, []).append(f"{c.job_id}/{c.idx} ({c.items} items, {c.model})")
    for w in snap.live_workers:
        models = ", ".join(f"{m['model']} {format_size(m.get('bytes'))}" for m in w.models) or "none"
        table.add_row(w.hostname, w.device, w.status.value, models, "\n".join(held.get(w.hostname, [])) or "idle",
                      rates.rate(w), f"{w.heartbeat_age_s:.0f}s ago")  # fmt: skip
    if not snap.live_workers:
        table.add_row("no live workers", "", "", "", "", "", "")
    return table


def _eta(job: JobInfo) -> tuple[str, str]:
    """Items/s since the job started, and the time left at that rate."""
    if job.status.terminal:
        return (f"{job.items_per_s:.1f}" if job.items_per_s else "-"), "done"
    if job.started_at is None or not job.finished:
        return "-", "-"
    seconds = (utcnow() - as_utc(job.started_at)).total_seconds()
    rate = job.finished / seconds if seconds > 0 else 0.0
    if rate <= 0:
        return "-", "-"
    left = job.pending / rate
    return f"{rate:.1f}", f"{left:.0f}s" if left < 120 else f"{left / 60:.0f}m"


def _jobs(jobs: list[JobInfo], ended: int) -> Table:
    title = f"jobs running and queued ({len(jobs) - ended}), then the last {ended} ended"
    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("job", no_wrap=True, min_width=36)
    for column in ("model", "status", "prio", "progress", "done/total", "failed", "items/s", "ETA"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        rate, eta = _eta(job)
        bar = ProgressBar(total=max(job.total, 1), completed=job.finished, width=24)
        table.add_row(job.id, job.model, job.status.value, str(job.priority), bar, f"{job.finished}/{job.total}",
                      str(job.failed), rate, eta)  # fmt: skip
    if not jobs:
        table.add_row("no running or queued jobs", "", "", "", "", "", "", "", "")
    return table


def _queues(snap: Snapshot, settings: Settings) -> Table:
    table = Table(title="queues", title_justify="left", expand=True)
    for column in ("queue", "models", "messages (Redis)", "by priority", "queued chunks (db)", "queued items"):
        table.add_column(column, overflow="fold")
    groups: dict[str, dict[str, Any]] = {}
    for g in snap.stats.chunks if snap.stats else []:
        if g.status == "queued":
            entry = groups.setdefault(g.queue or "(never sent)", {"models": set(), "chunks": 0, "items": 0})
            entry["models"].add(g.model)
            entry["chunks"] += g.chunks
            entry["items"] += g.items
    queues = sorted({q for q, _ in (snap.depths or {})} | set(groups))
    for queue in queues:
        entry = groups.get(queue, {"models": set(), "chunks": 0, "items": 0})
        own = queue.removeprefix(settings.queue + ".") if queue.startswith(settings.queue + ".") else None
        models = ", ".join(sorted(entry["models"] | ({own} if own else set()))) or "(shared)"
        depth = snap.queue_depth(queue)
        waiting = sorted((snap.depths or {}).items(), reverse=True)
        split = " ".join(f"p{p}:{n}" for (q, p), n in waiting if q == queue and n)
        table.add_row(queue, models, "?" if depth is None else str(depth), split or "-", str(entry["chunks"]),
                      str(entry["items"]))  # fmt: skip
    return table


def _console(once: bool) -> Console:
    console = Console()
    if once and not console.is_terminal:  # a script reads the frame: never cut names to COLUMNS=80
        console = Console(width=max(ONCE_WIDTH, console.width))
    return console


def run_top(settings: Settings, once: bool = False, interval: float = 1.0) -> int:
    """Draw frames every ``interval`` seconds until Ctrl-C (``once``: one frame); exit code 0."""
    from rich.live import Live

    ledger, client, rates = Ledger.for_settings(settings), broker_client(settings), Rates()
    console = _console(once)
    finished: tuple[float, list[JobInfo]] = (-FINISHED_EVERY, [])

    def frame() -> Group:
        nonlocal finished
        snap = take_snapshot(settings, ledger, client, running=True)
        jobs: list[JobInfo] = []
        try:
            if "database" not in snap.errors:
                jobs = ledger.active_jobs(JOBS_SHOWN)
                if time.monotonic() - finished[0] >= FINISHED_EVERY:
                    finished = (time.monotonic(), ledger.finished_jobs(FINISHED_SHOWN))
        except Exception as exc:  # gone between the reads: shown in the header
            snap.errors["database"] = str(exc)
        return render(snap, rates, jobs + finished[1], settings, ended=len(finished[1]))

    if once:
        console.print(frame())
        return 0
    try:
        with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        pass
    return 0
