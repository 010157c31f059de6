"""Carrying out one tick: claim it, read its source, submit its job; and a run's sink step.

Used by the scheduler's loop and by ``sluice schedules run`` / ``sink-retry``. A tick is claimed
(inserted as ``claimed``) before anything is read; its job's id is derived from (schedule,
scheduled time), so whoever resumes a claim whose claimer crashed mid-submit finds or makes the
same job, never a second one.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

from producer.client import Client
from producer.inputs import Keyed, read_input
from sluice.clock import utcnow
from sluice.ledger.schedules import SchedulesLedger, TickInfo
from sluice.logs import Redactor
from sluice.metrics import SchedulerMetrics
from sluice.schedules.config import FileSink, Schedule, SqlSource
from sluice.schedules.due import job_id_for, since_bound, sink_path, sink_retry_at
from sluice.settings import Settings
from sluice.sinks import upsert_table, write_file
from sluice.sources import read_sql

log = logging.getLogger("sluice.scheduler")

#: Longest wait between two attempts of a failing sink.
SINK_BACKOFF_CAP_S = 300.0
_BOUND = re.compile(r":(since|until)\b")
_redact = Redactor()


def message(exc: BaseException) -> str:
    """An error as one line to store on a tick, passwords in URLs masked."""
    text = str(exc).strip().splitlines()
    return _redact(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)


def source_items(schedule: Schedule, since: datetime | None, until: datetime) -> Iterator[Any]:
    """The items of one run: a SQL source's rows, or its files' records. The query may use
    ``:since`` (the last successful run's scheduled time) and ``:until`` (this run's): with both,
    a row changed while a run reads is read by the next run, never by two."""
    src = schedule.source
    if isinstance(src, SqlSource):
        bounds = {"since": since, "until": until}
        params = {name: bounds[name] for name in set(_BOUND.findall(src.sql))} or None
        return read_sql(src.url, src.sql, params, key_column=src.key_column, text_column=src.text_column)
    return _file_items(src.path, src.key_column, src.text_column)


def source_files(pattern: str) -> list[Path]:
    """The files (or directory) a file source names: a glob expands in sorted order."""
    if glob.has_magic(pattern):
        return [Path(p) for p in sorted(glob.glob(pattern))]
    return [Path(pattern)] if Path(pattern).exists() else []


def _file_items(pattern: str, key_column: str | None, text_column: str | None) -> Iterator[Any]:
    """Records of every file; one without a key is keyed ``file name:position`` (stable across runs)."""
    for path in source_files(pattern):
        records = read_input(path, key_column=key_column, text_column=text_column)
        for n, record in enumerate(records):
            yield record if isinstance(record, Keyed) and record.key is not None else Keyed(
                f"{path.name}:{n}", record.record if isinstance(record, Keyed) else record)  # fmt: skip


class Runner:
    """Submits ticks' jobs and runs their sinks, recording each outcome on the tick."""

    def __init__(
        self, settings: Settings, client: Client, store: SchedulesLedger, holder: str,
        metrics: SchedulerMetrics | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.client = client
        self.store = store
        self.holder = holder
        self.metrics = metrics

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.tick(outcome)

    def record(self, schedule: str, at: datetime, trigger: str, outcome: str, reason: str | None) -> bool:
        """Record a tick that starts nothing (skipped, missed, buffered); False if it existed."""
        row = {"schedule": schedule, "scheduled_at": at, "trigger": trigger, "outcome": outcome, "reason": reason,
               "claimed_by": self.holder}  # fmt: skip
        recorded = self.store.insert_tick(row)
        if recorded and outcome != "buffered":
            self.count(outcome)
        return recorded

    def start(self, schedule: Schedule, at: datetime, trigger: str, reason: str | None = None) -> str | None:
        """Claim the tick and submit its job; its outcome, or None when another claimed it first."""
        row = {"schedule": schedule.name, "scheduled_at": at, "trigger": trigger, "outcome": "claimed",
               "reason": reason, "claimed_by": self.holder}  # fmt: skip
        if not self.store.insert_tick(row):
            return None
        return self.submit(schedule, at, reason)

    def submit(self, schedule: Schedule, at: datetime, reason: str | None = None) -> str:
        """Submit a claimed tick's job (or find it, when a crashed claimer got that far); its outcome."""
        job_id = job_id_for(schedule.name, at)
        since = None
        if isinstance(schedule.source, SqlSource):
            since = since_bound(self.store.last_success(schedule.name), schedule.source.since)
        if self.client.ledger.job(job_id) is not None:
            return self._finish(schedule, at, "started", reason, job_id, since)
        try:
            items = source_items(schedule, since, at)
            first = next(items, None)
            if first is None:
                return self._finish(schedule, at, "skipped", "the source had no items (no new rows or no files)")
            self.client.submit(schedule.model, chain([first], items), params=dict(schedule.params),
                               priority=schedule.priority, job_id=job_id,
                               callback_url=schedule.callback_url)  # fmt: skip
        except Exception as exc:
            if self.client.ledger.job(job_id) is not None:  # another scheduler stored it meanwhile
                return self._finish(schedule, at, "started", reason, job_id, since)
            log.warning("schedule %s: the run of %s failed: %s", schedule.name, at.isoformat(), message(exc))
            return self._finish(schedule, at, "failed", message(exc))
        log.info("schedule %s: started job %s for %s", schedule.name, job_id, at.isoformat())
        return self._finish(schedule, at, "started", reason, job_id, since)

    def _finish(self, schedule: Schedule, at: datetime, outcome: str, reason: str | None,
                job_id: str | None = None, since: datetime | None = None) -> str:  # fmt: skip
        if self.store.finish_claim(schedule.name, at, outcome, reason=reason, job_id=job_id, since=since):
            self.count(outcome)
        return outcome

    def cancel_going(self, schedule: Schedule, going: list[TickInfo]) -> None:
        """Cancel the jobs of these runs that are still going (overlap ``cancel_previous``)."""
        for tick in going:
            ongoing = tick.job_id is not None and tick.outcome == "started" and tick.ended_at is None
            if ongoing and self.client.cancel(str(tick.job_id)):
                log.info("schedule %s: cancelled job %s (overlap cancel_previous)", schedule.name, tick.job_id)

    # sinks ------------------------------------------------------------------------------------
    def target(self, schedule: Schedule, tick: TickInfo) -> str:
        """Where the tick's sink writes: the file path, or ``table NAME`` (never the URL)."""
        sink = schedule.sink
        if isinstance(sink, FileSink):
            return sink_path(sink.path, schedule.name, tick.scheduled_at, schedule.tz, tick.job_id or "")
        return f"table {sink.table}" if sink is not None else "-"

    def run_sink(self, schedule: Schedule, tick: TickInfo, retry: bool = True) -> bool:
        """Write the tick's job results to its sink (the tick's sink step is claimed: ``running``);
        record the outcome. A failure is retried after a back-off unless ``retry`` is off or the
        attempts are used up; whether it worked."""
        sink = schedule.sink
        assert sink is not None and tick.job_id is not None
        target = self.target(schedule, tick)
        try:
            rows = self.client.results(tick.job_id)
            if isinstance(sink, FileSink):
                written = write_file(rows, Path(target))
            else:
                written = upsert_table(sink.url, sink.table, rows, schedule=schedule.name, job_id=tick.job_id,
                                       scheduled_at=tick.scheduled_at)  # fmt: skip
        except Exception as exc:
            now = utcnow()
            attempts = tick.sink_attempts + 1
            retry_at = sink_retry_at(attempts, now, self.settings.scheduler_sink_backoff, SINK_BACKOFF_CAP_S,
                                     self.settings.scheduler_sink_attempts) if retry else None  # fmt: skip
            when = f"retrying at {retry_at.isoformat()}" if retry_at else "given up"
            log.warning("schedule %s: sink to %s failed (attempt %d; %s): %s", schedule.name, target, attempts,
                        when, message(exc))  # fmt: skip
            self.store.sink_failed(schedule.name, tick.scheduled_at, message(exc), retry_at, now, target)
            return False
        self.store.sink_done(schedule.name, tick.scheduled_at, target, written, utcnow())
        log.info("schedule %s: wrote %d row(s) of job %s to %s", schedule.name, written, tick.job_id, target)
        return True
