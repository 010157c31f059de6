"""The soak's verdict, from the database rows themselves (read directly, not through the proxy).

* lost: items still ``pending`` when the soak stopped waiting, plus item rows missing altogether;
* duplicated: a result cannot be stored twice (one row per item, written only while pending), so
  a double write would show as a job counter above its item rows; every drift is reported;
* wrongly failed: with no invalid or poison input, every failed item is one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import redis
from sqlalchemy import and_, func, select

from sluice.db import chunks_table as chunks
from sluice.db import get_engine
from sluice.db import items_table as items
from sluice.db import jobs_table as jobs
from sluice.status import ChunkStatus, ItemStatus, JobStatus

MB = 1 << 20


def database_checks(url: str) -> dict[str, Any]:
    engine = get_engine(url)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        job_rows = conn.execute(select(jobs.c.id, jobs.c.status, jobs.c.total_items, jobs.c.done_items,
                                       jobs.c.failed_items)).all()  # fmt: skip
        by_job: dict[str, Counter[str]] = {}
        for job_id, status, n in conn.execute(select(items.c.job_id, items.c.status, func.count())
                                              .group_by(items.c.job_id, items.c.status)):  # fmt: skip
            by_job.setdefault(job_id, Counter())[status] = n
        out["items_by_status"] = _grouped(conn, items.c.status)
        out["attempts"] = {str(a): n for a, n in _grouped(conn, items.c.attempts).items()}
        error = func.substr(items.c.error, 1, 160)
        failed = items.c.status == ItemStatus.FAILED.value
        out["failure_reasons"] = {e or "": n for e, n in _grouped(conn, error, failed).items()}
        out["items_by_worker"] = {w or "(none)": n for w, n in _grouped(conn, items.c.worker).items()}
        out["chunks_by_status"] = _grouped(conn, chunks.c.status)
        out["chunk_deliveries"] = {str(d): n for d, n in _grouped(conn, chunks.c.deliveries).items()}
        open_chunks = select(jobs.c.status, func.count()).join(jobs, jobs.c.id == chunks.c.job_id)
        open_chunks = open_chunks.where(chunks.c.status != ChunkStatus.DONE.value).group_by(jobs.c.status)
        by_job_status: dict[str, int] = dict(conn.execute(open_chunks).all())
        out["open_chunks_active_jobs"] = sum(n for s, n in by_job_status.items() if not JobStatus(s).terminal)
        out["open_chunks_ended_jobs"] = sum(n for s, n in by_job_status.items() if JobStatus(s).terminal)
        out["split_chunks"] = conn.execute(select(func.count()).where(chunks.c.isolated.is_(True))).scalar_one()
        out["pending_detail"] = _pending_detail(conn)
    drift, duplicated, missing = [], 0, 0
    for job_id, _status, total, done, failed in job_rows:
        rows = by_job.get(job_id, Counter())
        if (done, failed) != (rows[ItemStatus.DONE.value], rows[ItemStatus.FAILED.value]):
            drift.append({"job": job_id, "counters": [done, failed],
                          "rows": [rows[ItemStatus.DONE.value], rows[ItemStatus.FAILED.value]]})  # fmt: skip
            duplicated += max(0, done - rows[ItemStatus.DONE.value]) + max(0, failed - rows[ItemStatus.FAILED.value])
        missing += max(0, total - sum(rows.values()))
    statuses = Counter(status for _, status, *_ in job_rows)
    out.update(
        jobs=len(job_rows), jobs_by_status=dict(statuses), counter_drift=drift[:20], counter_drift_jobs=len(drift),
        duplicated=duplicated, missing_rows=missing,
        total_items=sum(r[2] for r in job_rows),
        jobs_not_terminal=sum(n for s, n in statuses.items() if not JobStatus(s).terminal),
    )  # fmt: skip
    pending = out["items_by_status"].get(ItemStatus.PENDING.value, 0)
    out["lost"] = pending + missing
    out["wrongly_failed"] = out["items_by_status"].get(ItemStatus.FAILED.value, 0)
    return out


def _grouped(conn: Any, column: Any, *where: Any) -> dict[Any, int]:
    """Rows per value of ``column`` (in its order), optionally filtered."""
    query = select(column, func.count()).where(*where).group_by(column).order_by(column)
    return {value: n for value, n in conn.execute(query)}


def _pending_detail(conn: Any, limit: int = 20) -> list[dict[str, Any]]:
    """For a few pending items: the chunks that cover them and are not done (the stuck ones)."""
    rows = conn.execute(select(items.c.job_id, items.c.item, items.c.attempts)
                        .where(items.c.status == ItemStatus.PENDING.value).limit(limit)).all()  # fmt: skip
    out = []
    for job_id, item, attempts in rows:
        covering = conn.execute(
            select(chunks.c.idx, chunks.c.start, chunks.c.stop, chunks.c.status, chunks.c.deliveries,
                   chunks.c.leased_by, chunks.c.leased_at, chunks.c.enqueued_at, chunks.c.queue, chunks.c.isolated)
            .where(and_(chunks.c.job_id == job_id, chunks.c.start <= item, chunks.c.stop > item))
            .order_by(chunks.c.idx)
        ).all()  # fmt: skip
        out.append({"job": job_id, "item": item, "attempts": attempts,
                    "chunks": [{k: str(v) if v is not None and not isinstance(v, int | bool) else v
                                for k, v in c._asdict().items()} for c in covering]})  # fmt: skip
    return out


def redis_state(url: str) -> dict[str, Any]:
    """Keys left in the private Redis: queue lengths, unacked messages (informational)."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        out: dict[str, Any] = {}
        for key in sorted(client.scan_iter(count=1000)):
            kind = str(client.type(key))
            size = {"list": client.llen, "hash": client.hlen, "set": client.scard, "zset": client.zcard}.get(kind)
            out[str(key)] = size(key) if size else kind
        return out
    except (redis.RedisError, OSError) as exc:
        return {"error": str(exc)}


def supervisor_restarts(log_text: str) -> dict[str, Any]:
    """Deaths and restart delays the supervisor logged."""
    died = re.findall(r"(\S+@\S+) died \((.*?)\) after ([\d.]+)s; restarting in (\d+)s", log_text)
    return {"deaths": len(died), "delays_s": dict(Counter(int(d[3]) for d in died)),
            "by_cause": dict(Counter(d[1] for d in died))}  # fmt: skip


def memory_rows(memory: dict[int, Any], settle: float = 30.0) -> list[dict[str, Any]]:
    """Per process: RSS first / ``settle`` s after it was ready (a worker: its row said running; a
    helper: its first sample) / last / max, the growth since then and per minute (over 60 s or more)."""
    rows = []
    for mem in memory.values():
        s = mem.samples
        if not s:
            continue
        ready = mem.ready_at if mem.ready_at is not None else s[0][0]
        warm = next(((t, v) for t, v in s if t - ready >= settle), None)
        row = {"process": mem.name, "pid": mem.pid, "seen_s": round(s[-1][0] - s[0][0], 1),
               "ready_after_s": round(mem.ready_at - s[0][0], 1) if mem.ready_at is not None else None,
               "samples": len(s), "first_mb": round(s[0][1] / MB, 1), "last_mb": round(s[-1][1] / MB, 1),
               "max_mb": round(max(v for _, v in s) / MB, 1), "warm_mb": None, "growth_after_warm_mb": None,
               "mb_per_min_after_warm": None,
               "rss_mb": [(round(t, 1), round(v / MB, 1)) for t, v in s[:: max(1, len(s) // 100)]]}  # fmt: skip
        if warm is not None:
            row["warm_mb"] = round(warm[1] / MB, 1)
            row["growth_after_warm_mb"] = round((s[-1][1] - warm[1]) / MB, 1)
            span = s[-1][0] - warm[0]
            if span >= 60:
                row["mb_per_min_after_warm"] = round((s[-1][1] - warm[1]) / MB / (span / 60), 2)
        rows.append(row)
    return sorted(rows, key=lambda r: (not r["process"].startswith("cpu"), r["process"], r["pid"]))


def render(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    c, r = report["checks"], report["run"]
    lines = [f"## Sluice soak {r['stamp']}", "",
             f"{r['items']} items ({r['bulk_jobs']} bulk jobs of {r['bulk_size']} + {r['single_jobs']} single-item "
             f"jobs), model `{r['model']}` ({r['model_note']}), {r['workers']} CPU workers under `sluice worker "
             f"--gpus none`, `sluice reconcile --every {r['reconcile_every']}`, {r['database']}, a private "
             f"redis-server; SIGKILL to a random worker every {r['kill_every']} s.", "",
             "| figure | value | must be |", "|---|---:|---|"]  # fmt: skip

    def row(name: str, value: Any, must: str = "") -> None:
        lines.append(f"| {name} | {value} | {must} |")

    row("items submitted", r["items"])
    row("item rows done / failed / pending", " / ".join(
        str(c["items_by_status"].get(s, 0)) for s in ("done", "failed", "pending")))  # fmt: skip
    row("**lost** (pending at the end + missing rows)", f"**{c['lost']}**", "0")
    row("**duplicated** (job counters above their item rows)", f"**{c['duplicated']}**", "0")
    row("**wrongly failed** (no invalid or poison input)", f"**{c['wrongly_failed']}**", "0")
    row("jobs whose counters differ from their item rows", c["counter_drift_jobs"], "0")
    row("jobs by status", ", ".join(f"{k} {v}" for k, v in sorted(c["jobs_by_status"].items())))
    row("item `attempts` distribution", ", ".join(f"{k}: {v}" for k, v in c["attempts"].items()))
    row("chunks by status / split parts", f"{c['chunks_by_status']} / {c['split_chunks']}")
    row("chunks not done: of active jobs (stuck) / of ended jobs (left over, harmless)",
        f"{c['open_chunks_active_jobs']} / {c['open_chunks_ended_jobs']}", "0 / any")  # fmt: skip
    row("chunk deliveries distribution", ", ".join(f"{k}: {v}" for k, v in c["chunk_deliveries"].items()))
    row("submit: bulk jobs", f"{r['bulk_submit_s']:.1f} s ({r['bulk_items_per_s']:.0f} items/s)")
    row("submit: single-item jobs", f"{r['single_submit_s']:.1f} s ({r['single_ms_per_job']:.1f} ms per job, "
        f"{r['single_cpu_ms_per_job']:.1f} ms of it on the producer's CPU)")  # fmt: skip
    row("submit errors / jobs stored unsent", f"{r['submit_errors']} / {r['unsent']}", "0 / any")
    row("submit start → submit end", f"{r['submit_s']:.1f} s")
    row("**time to drain** (submit end → all items ended)", f"**{r['drain_s']}**")
    row("first submit → all ended; overall items/s", f"{r['total_s']} s; {r['overall_rate']}")
    load = ", ".join(f"{x:.1f}" for x in r["load_avg_end"])
    row("machine: cores; load average 1/5/15 min at the end", f"{r['cpus']}; {load}")
    restarts = report["restarts"]
    row("worker SIGKILLs / deaths the supervisor saw (by cause; restart delays in s)",
        f"{len(report['kills'])} / {restarts['deaths']} ({restarts['by_cause']}; {restarts['delays_s']})")  # fmt: skip
    lines += ["", "| fault | at (s) | healed (s) | items/s before | back to half rate after |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for f in report["faults"]:
        rec = f["recovery"]["recovered_s"]
        rec_s = f"{rec} s" if isinstance(rec, int | float) else str(rec)
        lines.append(f"| {f['kind']} | {f['at']} | {f['end'] if f['end'] is not None else ''} | "
                     f"{f['recovery']['pre_rate']} | {rec_s} |")  # fmt: skip
    lines += ["", "RSS in MB; *settled*: 30 s after the worker's row first said running (helpers: 30 s after the "
              "first sample); growth and MB/min from there to the last sample (MB/min over 60 s or more).", "",
              "| process | pid | seen (s) | ready after (s) | first | settled | last | max | growth | MB/min |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    for m in report["memory"]:
        lines.append(f"| {m['process']} | {m['pid']} | {m['seen_s']} | {cell(m['ready_after_s'])} | {m['first_mb']} | "
                     f"{cell(m['warm_mb'])} | {m['last_mb']} | {m['max_mb']} | {cell(m['growth_after_warm_mb'])} | "
                     f"{cell(m['mb_per_min_after_warm'])} |")  # fmt: skip
    if c["failure_reasons"]:
        lines += ["", "Failure reasons: " + json.dumps(c["failure_reasons"])]
    if c["pending_detail"]:
        lines += ["", "Pending items (first 20) and their chunks: " + json.dumps(c["pending_detail"])]
    if c["counter_drift"]:
        lines += ["", "Counter drift (first 20): " + json.dumps(c["counter_drift"])]
    return "\n".join(lines)
