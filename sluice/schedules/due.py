"""When a schedule fires and what each fire time does: pure functions of an injected ``now``.

Cron times are wall-clock times in the schedule's time zone (croniter). Across a daylight-saving
change: a time the spring-forward gap skips fires at the first instant after the gap (``30 2 * * *``
in Europe/Berlin runs at 03:00 CEST that day, as Vixie cron does); in the fall-back hour a fixed-hour
schedule fires once (the first 02:30), while one whose hour field is a wildcard (``*/15 * * * *``)
keeps its interval and fires in both passes of the repeated hour.

Each fire time after the schedule's cursor (its last cron tick, or when the scheduler first saw it
or it was resumed) gets one :class:`Decision`: ``missed`` when it is older than the catch-up
window, otherwise what the overlap policy says given the runs still going.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from croniter import croniter

from sluice.schedules.config import Overlap

#: ``:since`` of a SQL source's first run when the file sets none.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Fire times one pass handles per schedule; a scheduler back after a long outage records the
#: rest (as missed) over the next passes instead of in one long transaction.
MAX_TIMES_PER_PASS = 1000
#: Lateness a tick always tolerates, whatever its catch-up window (a pass runs about twice a second).
MIN_CATCHUP = timedelta(seconds=5)
#: Namespace of job ids derived from (schedule, scheduled time).
JOB_NAMESPACE = uuid.UUID("5c4ed0d6-1f0b-4b69-9c1e-8f8f52b8a0c1")


class Action(StrEnum):
    START = "start"
    REPLACE = "replace"  # cancel the runs going, then start (overlap cancel_previous)
    BUFFER = "buffer"
    SKIP = "skip"
    MISSED = "missed"


@dataclass(frozen=True)
class Decision:
    at: datetime
    action: Action
    reason: str | None = None


@dataclass(frozen=True)
class Runs:
    """A schedule's runs not over yet: scheduled times of those going, and whether one is buffered."""

    going: tuple[datetime, ...] = ()
    buffered: bool = False


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cron(cron: str, start: datetime) -> croniter:
    return croniter(cron, start, second_at_beginning=len(cron.split()) == 6)


def _fixed_hour(cron: str) -> bool:
    fields = cron.split()
    return not fields[2 if len(fields) == 6 else 1].startswith("*")


def _repeated(at: datetime) -> bool:
    """Whether ``at`` is the second pass of a wall time the fall-back hour repeats."""
    return at.fold == 1 and at.replace(fold=0).utcoffset() != at.utcoffset()


def fire_times(
    cron: str, tz: ZoneInfo, after: datetime, until: datetime, limit: int = MAX_TIMES_PER_PASS
) -> list[datetime]:
    """Fire times ``t`` with ``after < t <= until``, at most ``limit``, oldest first, aware UTC."""
    found: list[datetime] = []
    it = _cron(cron, after.astimezone(tz))
    fixed = _fixed_hour(cron)
    while len(found) < limit:
        at: datetime = it.get_next(datetime)
        if at > until:
            break
        if fixed and _repeated(at):
            continue
        found.append(at.astimezone(UTC))
    return found


def next_fire(cron: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire time after ``after`` (aware UTC)."""
    it = _cron(cron, after.astimezone(tz))
    at: datetime = it.get_next(datetime)
    while _fixed_hour(cron) and _repeated(at):
        at = it.get_next(datetime)
    return at.astimezone(UTC)


def cursor(first_seen: datetime, last_cron_tick: datetime | None, resumed_at: datetime | None) -> datetime:
    """The time after which fire times are still to handle: nothing before the scheduler first saw
    the schedule (no catch-up from the epoch), before its last cron tick, or before a resume."""
    return max(t for t in (first_seen, last_cron_tick, resumed_at) if t is not None)


def decide(policy: Overlap, at: datetime, now: datetime, catchup: timedelta, runs: Runs) -> Decision:
    """What the fire time ``at`` does at ``now``."""
    late = now - at
    if late > max(catchup, MIN_CATCHUP):
        return Decision(at, Action.MISSED, f"due {_iso(at)}, {late.total_seconds():.0f} s ago: past the catch-up "
                                           f"window of {catchup.total_seconds():.0f} s")  # fmt: skip
    if not runs.going or policy is Overlap.ALLOW:
        return Decision(at, Action.START)
    going = f"the run of {_iso(runs.going[-1])} is still going"
    if policy is Overlap.CANCEL_PREVIOUS:
        return Decision(at, Action.REPLACE, f"{going}: cancelled (overlap cancel_previous)")
    if policy is Overlap.BUFFER_ONE and not runs.buffered:
        return Decision(at, Action.BUFFER, f"{going}: runs when it ends (overlap buffer_one)")
    if policy is Overlap.BUFFER_ONE:
        return Decision(at, Action.SKIP, f"{going} and another run is already buffered (overlap buffer_one)")
    return Decision(at, Action.SKIP, f"{going} (overlap skip)")


def after_decision(runs: Runs, decision: Decision) -> Runs:
    """The runs going once ``decision`` is carried out."""
    if decision.action is Action.START:
        return replace(runs, going=(*runs.going, decision.at))
    if decision.action is Action.REPLACE:
        return replace(runs, going=(decision.at,))
    if decision.action is Action.BUFFER:
        return replace(runs, buffered=True)
    return runs


def plan(policy: Overlap, times: Sequence[datetime], now: datetime, catchup: timedelta, runs: Runs) -> list[Decision]:
    """A decision for each fire time, oldest first, each seeing the runs the earlier ones started.

    Under ``cancel_previous`` only the latest of several due times runs: the earlier ones would be
    cancelled at once, so they are recorded as skipped (superseded) rather than started.
    """
    decisions: list[Decision] = []
    due = [at for at in times if decide(policy, at, now, catchup, Runs()).action is not Action.MISSED]
    for at in times:
        if policy is Overlap.CANCEL_PREVIOUS and due and at in due and at != due[-1]:
            decision = Decision(at, Action.SKIP, f"superseded by the run of {_iso(due[-1])} (overlap cancel_previous)")
        else:
            decision = decide(policy, at, now, catchup, runs)
        decisions.append(decision)
        runs = after_decision(runs, decision)
    return decisions


def job_id_for(schedule: str, at: datetime) -> str:
    """The job id of a tick: the same for every scheduler and restart, so a crash between claiming
    the tick and recording its job resumes without a second job."""
    return str(uuid.uuid5(JOB_NAMESPACE, f"{schedule}@{at.astimezone(UTC).isoformat()}"))


def since_bound(last_success: datetime | None, configured: datetime | None) -> datetime:
    """``:since`` of a SQL source: the last successful run's scheduled time, else the file's, else the epoch."""
    return last_success or configured or EPOCH


def sink_retry_at(attempts: int, now: datetime, base: float, cap: float, max_attempts: int) -> datetime | None:
    """When to try a sink again after its ``attempts``-th failure (doubling from ``base`` seconds up
    to ``cap``); None once ``max_attempts`` have failed."""
    if attempts >= max_attempts:
        return None
    return now + timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


def sink_path(template: str, schedule: str, at: datetime, tz: ZoneInfo, job: str) -> str:
    """A file sink's path: ``{date}`` (YYYY-MM-DD) and ``{time}`` (HHMMSS) are the scheduled time in
    the schedule's time zone."""
    local = at.astimezone(tz)
    return template.format(schedule=schedule, date=local.strftime("%Y-%m-%d"), time=local.strftime("%H%M%S"), job=job)
