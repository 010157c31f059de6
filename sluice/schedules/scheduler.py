"""``sluice scheduler``: fires due ticks, resumes interrupted ones, runs sinks when jobs end, and
reconciles periodically (what ``sluice reconcile --every`` did), while it holds the lease.

Any number may run; the one holding the lease (:mod:`sluice.schedules.lease`) acts, the others
wait to take over. Each pass (every ``SLUICE_SCHEDULER_POLL_SECONDS``):

1. jobs of started ticks that ended are recorded, with their sink step due (or none);
2. each schedule's fire times since its cursor are decided (:func:`sluice.schedules.due.plan`)
   and carried out: recorded as missed / skipped / buffered, or claimed and submitted;
3. claims whose claimer died mid-submit are resumed, buffered ticks whose wait is over start;
4. due sinks are claimed and run on a small thread pool, so a long upsert never delays a tick.

The schedules file is read again when it changes; an invalid edit is logged and the last good
version kept running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from producer.client import Client
from sluice.clock import utcnow
from sluice.ledger.schedules import SchedulesLedger, TickInfo
from sluice.logs import FailureStreak
from sluice.metrics import SchedulerMetrics
from sluice.recovery import reconcile
from sluice.routing import STALE_AFTER_BEATS
from sluice.schedules.config import Schedule, load_schedules
from sluice.schedules.due import Action, Decision, Runs, cursor, fire_times, plan
from sluice.schedules.lease import LeaseKeeper
from sluice.schedules.runs import Runner, message
from sluice.settings import Settings

log = logging.getLogger("sluice.scheduler")

#: Threads running sinks at once.
SINK_THREADS = 2


def default_holder() -> str:
    """This process's name on the lease: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ScheduleFile:
    """The schedules file, read again when its modification time changes; the last good version
    stays in force when an edit is invalid."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: float | None = None
        self.schedules: dict[str, Schedule] = {}

    def current(self) -> dict[str, Schedule]:
        if self.path is None:
            return {}
        try:
            stamp = self.path.stat().st_mtime
        except OSError as exc:
            if self._stamp is not None or not self.schedules:
                log.error("cannot read the schedules file %s: %s", self.path, exc)
            self._stamp = None
            return self.schedules
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.schedules = load_schedules(self.path)
                log.info("schedules from %s: %s", self.path, ", ".join(sorted(self.schedules)) or "none")
            except Exception as exc:
                log.error("%s; keeping the previous schedules (%d)", exc, len(self.schedules))
        return self.schedules


class Scheduler:
    """The scheduler process; :meth:`run` until ``stop`` is set, :meth:`step` for one pass."""

    def __init__(
        self, settings: Settings, *, holder: str | None = None, reconcile_every: float | None = 60.0,
        clock: Callable[[], datetime] = utcnow, metrics: SchedulerMetrics | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.clock = clock
        self.holder = holder or default_holder()
        self.store = SchedulesLedger.for_settings(settings)
        self.client = Client(settings)
        self.runner = Runner(settings, self.client, self.store, self.holder, metrics)
        self.keeper = LeaseKeeper(self.store, self.holder, settings.scheduler_lease_seconds,
                                  settings.scheduler_renew_seconds)  # fmt: skip
        self.file = ScheduleFile(settings.schedules_file)
        self.reconcile_every = reconcile_every
        self._sinks = ThreadPoolExecutor(max_workers=SINK_THREADS, thread_name_prefix="sluice-sink")
        self._in_flight: set[tuple[str, datetime]] = set()
        self._lock = threading.Lock()
        self._generation = 0
        self._next_reconcile = 0.0
        self._judge_from = time.monotonic()
        self._streak = FailureStreak(log)

    # the loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Keep the lease and act while holding it, until ``stop``; then give the lease back."""
        self.keeper.start()
        try:
            while not stop.is_set():
                if self.keeper.active():
                    self._guarded(self._active_pass)
                stop.wait(self.settings.scheduler_poll_seconds)
        finally:
            self.keeper.stop(release=True)
            self._sinks.shutdown(wait=True, cancel_futures=True)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run a pass; a failure (the database away for a moment) is logged once and retried next pass."""
        try:
            work()
        except Exception as exc:
            self._streak.failed(logging.ERROR, "scheduler pass failed: %s; retrying", message(exc))
            return
        self._streak.succeeded("scheduler passes work again")

    def _active_pass(self) -> None:
        if self.keeper.generation != self._generation:  # just took the lease: adopt what the last holder left
            self._generation = self.keeper.generation
            with self._lock:
                keep = set(self._in_flight)
            if n := self.store.release_sinks(keep):
                log.info("took over %d sink(s) left running by the previous scheduler", n)
        self.step(self.clock())
        self._maybe_reconcile()

    def _maybe_reconcile(self) -> None:
        """Every ``reconcile_every`` seconds, a reconcile pass (chunks of gone workers, lost messages)."""
        if self.reconcile_every is None or time.monotonic() < self._next_reconcile:
            return
        self._next_reconcile = time.monotonic() + self.reconcile_every
        try:
            if n := reconcile(self.client.dispatcher, judge_workers=time.monotonic() >= self._judge_from):
                log.info("re-enqueued %d chunk(s)", n)
        except Exception as exc:  # as reconcile_every: do not judge workers until they could report again
            self._judge_from = time.monotonic() + STALE_AFTER_BEATS * self.settings.heartbeat_seconds
            log.error("reconcile pass failed: %s", message(exc))

    # one pass ---------------------------------------------------------------------------------
    def step(self, now: datetime) -> None:
        """One pass at ``now`` (the caller holds the lease)."""
        schedules = self.file.current()
        self._record_ends(schedules, now)
        self._fire(schedules, now)
        self._resume(schedules, now)
        self._start_sinks(schedules, now)

    def _record_ends(self, schedules: dict[str, Schedule], now: datetime) -> None:
        for run in self.store.ended_runs():
            schedule = schedules.get(run.schedule)
            if schedule is None or schedule.sink is None:
                status = "none"
            else:
                status = "pending" if run.job_status == "completed" else "skipped"
            self.store.mark_ended(run, status, now)

    def _fire(self, schedules: dict[str, Schedule], now: datetime) -> None:
        if not schedules:
            return
        states = self.store.ensure_schedules(schedules, now)
        last = self.store.last_cron_ticks(schedules)
        open_runs = self.store.open_runs()
        for name, schedule in schedules.items():
            state = states[name]
            if state.paused:
                continue
            times = fire_times(schedule.cron, schedule.tz, cursor(state.first_seen_at, last.get(name),
                                                                    state.resumed_at), now)  # fmt: skip
            if not times:
                continue
            decisions = plan(schedule.overlap, times, now, schedule.catchup, runs_of(open_runs.get(name, [])))
            self._carry_out(schedule, decisions, open_runs.get(name, []))

    def _carry_out(self, schedule: Schedule, decisions: list[Decision], going: list[TickInfo]) -> None:
        for decision in decisions:
            if not self.keeper.active():
                return  # lost the lease mid-pass: the next holder picks up from the last recorded tick
            if decision.action is Action.START:
                self.runner.start(schedule, decision.at, "cron")
            elif decision.action is Action.REPLACE:
                self.runner.cancel_going(schedule, going)
                self.runner.start(schedule, decision.at, "cron", decision.reason)
            else:
                outcome = {Action.MISSED: "missed", Action.BUFFER: "buffered", Action.SKIP: "skipped"}[decision.action]
                self.runner.record(schedule.name, decision.at, "cron", outcome, decision.reason)

    def _resume(self, schedules: dict[str, Schedule], now: datetime) -> None:
        """Claims left by a crashed claimer, and buffered ticks whose wait is over."""
        stale_before = now - timedelta(seconds=2 * self.settings.scheduler_lease_seconds)
        for name, ticks in self.store.open_runs().items():
            schedule = schedules.get(name)
            if schedule is None:
                continue
            for tick in ticks:
                left = tick.outcome == "claimed" and tick.claimed_at < stale_before
                if left and self.store.reclaim(name, tick.scheduled_at, self.holder, stale_before, now):
                    log.warning("schedule %s: resuming the run of %s left by %s", name,
                                tick.scheduled_at.isoformat(), tick.claimed_by)  # fmt: skip
                    self.runner.submit(schedule, tick.scheduled_at, tick.reason)
            buffered = [t for t in ticks if t.outcome == "buffered"]
            if buffered and not [t for t in ticks if t.outcome != "buffered"]:
                tick = buffered[0]
                if self.store.claim_buffered(name, tick.scheduled_at, self.holder, now):
                    self.runner.submit(schedule, tick.scheduled_at, tick.reason)

    def _start_sinks(self, schedules: dict[str, Schedule], now: datetime) -> None:
        for tick in self.store.due_sinks(now):
            key = (tick.schedule, tick.scheduled_at)
            with self._lock:
                if key in self._in_flight:
                    continue
            schedule = schedules.get(tick.schedule)
            if schedule is None or schedule.sink is None:
                self.store.sink_failed(tick.schedule, tick.scheduled_at, "the schedule has no sink any more", None, now)
                continue
            if not self.keeper.active() or not self.store.claim_sink(tick.schedule, tick.scheduled_at, now):
                continue
            with self._lock:
                self._in_flight.add(key)
            self._sinks.submit(self._sink, schedule, tick)

    def _sink(self, schedule: Schedule, tick: TickInfo) -> None:
        try:
            self.runner.run_sink(schedule, tick)
        except Exception as exc:  # recording the outcome failed (the database is away): back to pending later
            log.error("schedule %s: sink bookkeeping failed: %s", schedule.name, message(exc))
        finally:
            with self._lock:
                self._in_flight.discard((tick.schedule, tick.scheduled_at))


def runs_of(ticks: list[TickInfo]) -> Runs:
    """The overlap state of a schedule's open ticks."""
    going = tuple(t.scheduled_at for t in ticks if t.outcome != "buffered")
    return Runs(going=going, buffered=any(t.outcome == "buffered" for t in ticks))
