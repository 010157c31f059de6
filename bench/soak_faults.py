"""The soak's conductor: one thread that samples progress and memory and injects the faults.

* every second: items ended so far (the jobs' counters, read directly, not through the proxy);
* every ``rss_every`` seconds: the RSS of each worker child of the supervisor (and of the
  supervisor, the reconciler and redis-server);
* every ``kill_every`` seconds: SIGKILL to one live worker child, chosen at random;
* once, when a third of the items have ended: redis-server killed and started again, empty;
* once, when two thirds have ended: the database link of workers and reconciler cut for
  ``db_down`` seconds (PostgreSQL only).
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from bench.soak_stack import ProxyProcess, RedisServer, rss, worker_children
from sluice.db import get_engine, jobs_table, workers_table
from sluice.status import WorkerStatus

log = logging.getLogger("bench.soak")


@dataclass
class ProcMemory:
    """RSS samples of one process: (seconds since the soak started, bytes)."""

    name: str
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: when its ``workers`` row first said running under this pid (models loaded, consuming)
    ready_at: float | None = None


@dataclass
class Fault:
    kind: str
    at: float
    end: float | None = None
    detail: str = ""


class Conductor(threading.Thread):
    def __init__(
        self, database_url: str, planned: int, supervisor: subprocess.Popen[bytes], others: dict[str, int],
        redis_server: RedisServer, proxy: ProxyProcess | None, *, kill_every: float, redis_down: float,
        db_down: float, rss_every: float = 3.0, seed: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name="soak-conductor", daemon=True)
        self.engine = get_engine(database_url)
        self.planned = planned
        self.supervisor = supervisor
        self.others = others  # name -> pid of long-lived helpers whose memory is sampled too
        self.redis = redis_server
        self.proxy = proxy
        self.kill_every = kill_every
        self.redis_down = redis_down
        self.db_down = db_down
        self.rss_every = rss_every
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, int]] = []  # (t, items ended)
        self.memory: dict[int, ProcMemory] = {}
        self.known_pids: set[int] = set()
        self.kills: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._redis_fault: Fault | None = None
        self._db_fault: Fault | None = None
        self._next_kill = self.t0 + kill_every
        self._next_rss = self.t0

    # state read by the main thread ---------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def ended(self) -> int:
        return self.timeline[-1][1] if self.timeline else 0

    @property
    def faults_over(self) -> bool:
        """Both one-off faults injected and healed (the DB one counts as over on SQLite, where it is skipped)."""
        redis_over = self._redis_fault is not None and self._redis_fault.end is not None
        db_over = self.proxy is None or (self._db_fault is not None and self._db_fault.end is not None)
        return redis_over and db_over

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def heal(self) -> None:
        """Undo an injected fault still in force (used on the way out, after :meth:`stop`)."""
        if self._db_fault is not None and self._db_fault.end is None and self.proxy is not None:
            self.proxy.restore()
            self._db_fault.end = self.now()
        if self._redis_fault is not None and self._redis_fault.end is None:
            self.redis.start()
            self._redis_fault.end = self.now()

    # the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        next_sample = 0.0
        while not self._halt.is_set():
            try:
                t = self.now()
                if t >= next_sample:
                    self._sample_progress()
                    next_sample = t + 1.0
                if time.monotonic() >= self._next_rss:
                    self._sample_memory()
                    self._next_rss += self.rss_every
                self._maybe_kill()
                self._maybe_faults()
            except Exception as exc:  # a sampling hiccup must not end the soak
                self.errors.append(f"{self.now():.1f}s: {type(exc).__name__}: {exc}")
                log.warning("conductor: %s", exc)
            self._halt.wait(0.25)

    def _sample_progress(self) -> None:
        with self.engine.connect() as conn:
            n = conn.execute(select(func.coalesce(func.sum(jobs_table.c.done_items + jobs_table.c.failed_items), 0)))
            self.timeline.append((self.now(), int(n.scalar_one())))

    def _sample_memory(self) -> None:
        t = self.now()
        procs = {pid: name for pid, name in worker_children(self.supervisor).items()}
        procs.update({pid: name for name, pid in self.others.items()})
        if self.redis.proc is not None:
            procs[self.redis.proc.pid] = f"redis-server#{self.redis.starts}"
        with self.engine.connect() as conn:
            running = {pid for pid, status in conn.execute(select(workers_table.c.pid, workers_table.c.status))
                       if status == WorkerStatus.RUNNING.value}  # fmt: skip
        for pid, name in procs.items():
            if (value := rss(pid)) is None:
                continue
            self.known_pids.add(pid)
            mem = self.memory.setdefault(pid, ProcMemory(name, pid))
            mem.samples.append((t, value))
            if mem.ready_at is None and pid in running:
                mem.ready_at = t

    def _maybe_kill(self) -> None:
        if time.monotonic() < self._next_kill:
            return
        children = worker_children(self.supervisor)
        if not children:
            return  # every child is between death and restart: the kill stays due
        pid = self.rng.choice(sorted(children))
        self.known_pids.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills.append({"at": round(self.now(), 1), "pid": pid, "node": children[pid], "ended": self.ended})
        log.info("%.0fs: SIGKILL %s (pid %d)", self.now(), children[pid], pid)
        self._next_kill += self.kill_every
        while self._next_kill < time.monotonic():
            self._next_kill += self.kill_every

    def _maybe_faults(self) -> None:
        t, done = self.now(), self.ended
        redis_fault = self._redis_fault
        if redis_fault is None and done >= self.planned / 3:
            self.redis.kill()
            self._redis_fault = Fault("redis restart (empty)", t, detail=f"{done} items ended before")
            self.faults.append(self._redis_fault)
            log.info("%.0fs: redis-server killed (%d items ended)", t, done)
        elif redis_fault is not None and redis_fault.end is None and t >= redis_fault.at + self.redis_down:
            self.redis.start()
            redis_fault.end = self.now()
            log.info("%.0fs: redis-server started again, empty", redis_fault.end)
        if self.proxy is None:
            return
        db_fault = self._db_fault
        if db_fault is None and redis_fault is not None and done >= 2 * self.planned / 3:
            self.proxy.cut()
            self._db_fault = Fault(f"database link cut {self.db_down:.0f}s", t, detail=f"{done} items ended before")
            self.faults.append(self._db_fault)
            log.info("%.0fs: database link cut (%d items ended)", t, done)
        elif db_fault is not None and db_fault.end is None and t >= db_fault.at + self.db_down:
            self.proxy.restore()
            db_fault.end = self.now()
            log.info("%.0fs: database link restored", db_fault.end)

    # derived figures -------------------------------------------------------------------------
    def count_at(self, t: float) -> float:
        """Items ended at time ``t``, interpolated between samples."""
        line = self.timeline
        if not line:
            return 0.0
        k = bisect.bisect_left(line, (t, -1))
        if k == 0:
            return float(line[0][1])
        if k >= len(line):
            return float(line[-1][1])
        (t1, n1), (t2, n2) = line[k - 1], line[k]
        return n1 + (n2 - n1) * (t - t1) / max(t2 - t1, 1e-9)

    def recovery(
        self, at: float, before: float | None = None, pre: float = 20.0, window: float = 5.0
    ) -> dict[str, Any]:
        """Items/s over the ``pre`` seconds before ``before`` (default ``at``: the fault), and seconds
        from ``at`` until the rate over the next ``window`` seconds is back to half of it (0: it
        never fell that low)."""
        before = at if before is None else before
        start = max(self.timeline[0][0] if self.timeline else 0.0, before - pre)
        pre_rate = (self.count_at(before) - self.count_at(start)) / max(before - start, 1e-9)
        out: dict[str, Any] = {"pre_rate": round(pre_rate, 1), "recovered_s": None}
        if pre_rate <= 0:
            return out
        last = self.timeline[-1][0]
        t = at
        while t + window <= last:
            if (self.count_at(t + window) - self.count_at(t)) / window >= pre_rate / 2:
                out["recovered_s"] = round(t - at, 1)
                break
            t += 0.5
        if out["recovered_s"] is None and self.count_at(last) >= self.planned:
            out["recovered_s"] = "drained first"
        return out
