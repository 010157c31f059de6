"""Schedules: their ticks, their pause state and the scheduler's lease; all SQL over those tables.

At most once is the primary key's doing: a tick is a row keyed by (schedule, scheduled time),
and whoever inserts it first (an active scheduler, one taking over, ``sluice schedules run``)
owns it; every later move is a conditional UPDATE naming the state it leaves:

=========================  ==================================================================
from -> to                 when (method)
=========================  ==================================================================
(new) -> claimed           due and to run: inserted before the job is submitted (:meth:`insert_tick`)
(new) -> skipped|missed    recorded with the reason (:meth:`insert_ticks`)
(new) -> buffered          overlap ``buffer_one`` while a run is going
buffered -> claimed        the run it waited for ended (:meth:`claim_buffered`)
claimed -> started|...     the job is stored (its id is derived from the tick), or failed / empty
started: ended_at set      its job ended (:meth:`mark_ended`); ``sink_status`` pending or none
sink pending -> running    claimed by a scheduler or ``sluice schedules sink-retry`` (:meth:`claim_sink`)
sink running -> done|...   written, or failed: pending again after a back-off, or failed for good
=========================  ==================================================================

The lease is one row that SQLite and PostgreSQL both hold the same way: an UPDATE that takes it
when the caller holds it already or it has expired, an INSERT when no row exists yet. Its times
come from the database server's clock on PostgreSQL (schedulers on several hosts agree on it) and
from this host's on SQLite (whose writers all share one machine).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.clock import as_utc, utcnow
from sluice.db import jobs_table, schedule_ticks_table, scheduler_leases_table, schedules_table
from sluice.ledger.base import LedgerBase

ticks = schedule_ticks_table
states = schedules_table
leases = scheduler_leases_table
jobs = jobs_table

#: Outcomes a tick ends with (``claimed`` and ``buffered`` are on the way to one of them).
FINAL_OUTCOMES = ("started", "skipped", "missed", "failed")
#: Sink states in which a run is not over yet.
SINK_OPEN = ("pending", "running")


@dataclass(frozen=True)
class TickInfo:
    """A ``schedule_ticks`` row; times are aware UTC."""

    schedule: str
    scheduled_at: datetime
    trigger: str
    outcome: str
    reason: str | None
    job_id: str | None
    since: datetime | None
    claimed_by: str | None
    claimed_at: datetime
    started_at: datetime | None
    job_status: str | None
    ended_at: datetime | None
    sink_status: str | None
    sink_attempts: int
    sink_next_at: datetime | None
    sink_target: str | None
    sink_rows: int | None
    sink_error: str | None
    sink_at: datetime | None


@dataclass(frozen=True)
class ScheduleRow:
    """A ``schedules`` row: pause state, and since when the scheduler knows the schedule."""

    name: str
    paused: bool
    first_seen_at: datetime
    paused_at: datetime | None
    resumed_at: datetime | None


@dataclass(frozen=True)
class EndedRun:
    """A started tick whose job has ended, not yet recorded as such."""

    schedule: str
    scheduled_at: datetime
    job_id: str
    job_status: str


_TICK_FIELDS = [f.name for f in fields(TickInfo)]


def _aware(value: Any) -> Any:
    return as_utc(value) if isinstance(value, datetime) else value


def _tick(row: Any) -> TickInfo:
    values = row._mapping
    return TickInfo(**{name: _aware(values[name]) for name in _TICK_FIELDS})


def _schedule_row(row: Any) -> ScheduleRow:
    return ScheduleRow(row.name, bool(row.paused), as_utc(row.first_seen_at), _aware(row.paused_at),
                       _aware(row.resumed_at))  # fmt: skip


def _key(schedule: str, at: datetime) -> Any:
    # UTC always: SQLite stores the wall time without its offset, so the key must be UTC to match.
    return and_(ticks.c.schedule == schedule, ticks.c.scheduled_at == as_utc(at).astimezone(UTC))


class SchedulesLedger(LedgerBase):
    # inserts that may lose a race: ON CONFLICT DO NOTHING on both backends -----------------
    def _insert_ignoring(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> int:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        # RETURNING counts the rows that went in: the PostgreSQL driver reports no rowcount for an INSERT.
        statement = dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
        return sum(len(conn.execute(statement, row).all()) for row in rows)

    # schedule state ---------------------------------------------------------------------------
    def ensure_schedules(self, names: Iterable[str], now: datetime) -> dict[str, ScheduleRow]:
        """The rows of these schedules, creating those seen for the first time (``first_seen_at`` now)."""
        wanted = sorted(set(names))
        with self.engine.begin() as conn:
            known = {r.name for r in conn.execute(select(states.c.name).where(states.c.name.in_(wanted)))}
            new = [{"name": n, "paused": False, "first_seen_at": now} for n in wanted if n not in known]
            if new:
                self._insert_ignoring(conn, states, new)
            rows = conn.execute(select(states).where(states.c.name.in_(wanted))).all()
        return {r.name: _schedule_row(r) for r in rows}

    def set_paused(self, name: str, paused: bool, now: datetime) -> bool:
        """Pause or resume a schedule; False when it was so already. Resuming skips the fire
        times that passed while paused (they are neither run nor recorded)."""
        self.ensure_schedules([name], now)
        values = {"paused": paused, "paused_at": now} if paused else {"paused": paused, "resumed_at": now}
        with self.engine.begin() as conn:
            res = conn.execute(update(states).where(states.c.name == name, states.c.paused == (not paused))
                               .values(**values))  # fmt: skip
        return bool(res.rowcount)

    # ticks: recording -------------------------------------------------------------------------
    def insert_tick(self, row: dict[str, Any]) -> bool:
        """Insert one tick; False when it exists already (another scheduler owns it)."""
        return self.insert_ticks([row]) == 1

    def insert_ticks(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert ticks (skipped, missed, buffered, claimed), leaving any that exist; how many went in."""
        if not rows:
            return 0
        full = [{"sink_attempts": 0, "claimed_at": utcnow(), **row} for row in rows]
        with self.engine.begin() as conn:
            return self._insert_ignoring(conn, ticks, full)

    def claim_buffered(self, schedule: str, at: datetime, holder: str, now: datetime) -> bool:
        """buffered -> claimed: the run it waited for ended; False if another took it."""
        with self.engine.begin() as conn:
            res = conn.execute(update(ticks).where(_key(schedule, at), ticks.c.outcome == "buffered")
                               .values(outcome="claimed", claimed_by=holder, claimed_at=now))  # fmt: skip
        return bool(res.rowcount)

    def reclaim(self, schedule: str, at: datetime, holder: str, stale_before: datetime, now: datetime) -> bool:
        """Take over a claim its claimer left (claimed before ``stale_before``: it crashed mid-submit)."""
        cond = [_key(schedule, at), ticks.c.outcome == "claimed", ticks.c.claimed_at < stale_before]
        with self.engine.begin() as conn:
            res = conn.execute(update(ticks).where(*cond).values(claimed_by=holder, claimed_at=now))
        return bool(res.rowcount)

    def finish_claim(self, schedule: str, at: datetime, outcome: str, *, reason: str | None = None,
                     job_id: str | None = None, since: datetime | None = None) -> bool:  # fmt: skip
        """claimed -> started (with its job) / skipped / failed; False if it had left ``claimed``."""
        values: dict[str, Any] = {"outcome": outcome, "reason": reason, "job_id": job_id, "since": since}
        if outcome == "started":
            values["started_at"] = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(update(ticks).where(_key(schedule, at), ticks.c.outcome == "claimed").values(**values))
        return bool(res.rowcount)

    # ticks: reading ---------------------------------------------------------------------------
    def last_cron_ticks(self, names: Iterable[str]) -> dict[str, datetime]:
        """Per schedule, its latest cron tick (manual runs do not move the cron's cursor). Newest
        first down the primary key, one schedule at a time: no scan of a long history."""
        found = {}
        with self.engine.connect() as conn:
            for name in names:
                query = (select(ticks.c.scheduled_at).where(ticks.c.schedule == name, ticks.c.trigger == "cron")
                         .order_by(ticks.c.scheduled_at.desc()).limit(1))  # fmt: skip
                if (at := conn.execute(query).scalar()) is not None:
                    found[name] = as_utc(at)
        return found

    def last_success(self, schedule: str) -> datetime | None:
        """The scheduled time of the schedule's latest run whose job completed (the ``:since`` bound)."""
        query = (select(ticks.c.scheduled_at).select_from(ticks.join(jobs, jobs.c.id == ticks.c.job_id))
                 .where(ticks.c.schedule == schedule, jobs.c.status == "completed")
                 .order_by(ticks.c.scheduled_at.desc()).limit(1))  # fmt: skip
        with self.engine.connect() as conn:
            at = conn.execute(query).scalar()
        return None if at is None else as_utc(at)

    def open_runs(self) -> dict[str, list[TickInfo]]:
        """Per schedule, its runs not over: claimed, buffered, or started with the job or sink going.
        Each branch of the condition has an index (``outcome, ended_at``; ``sink_status``)."""
        going = or_(
            ticks.c.outcome.in_(("claimed", "buffered")),
            and_(ticks.c.outcome == "started", ticks.c.ended_at.is_(None)),
            ticks.c.sink_status.in_(SINK_OPEN),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(ticks).where(going).order_by(ticks.c.scheduled_at)).all()
        found: dict[str, list[TickInfo]] = {}
        for row in rows:
            found.setdefault(row.schedule, []).append(_tick(row))
        return found

    def ticks(self, schedule: str, limit: int = 20) -> list[TickInfo]:
        """The schedule's latest ticks, newest first."""
        query = select(ticks).where(ticks.c.schedule == schedule).order_by(ticks.c.scheduled_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_tick(r) for r in conn.execute(query)]

    def tick(self, schedule: str, at: datetime) -> TickInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(ticks).where(_key(schedule, at))).one_or_none()
        return None if row is None else _tick(row)

    def outcome_counts(self, schedule: str) -> dict[str, int]:
        query = select(ticks.c.outcome, func.count()).where(ticks.c.schedule == schedule).group_by(ticks.c.outcome)
        with self.engine.connect() as conn:
            return {outcome: n for outcome, n in conn.execute(query)}

    # job ends and sinks ------------------------------------------------------------------------
    def ended_runs(self) -> list[EndedRun]:
        """Started ticks whose job has reached a terminal status the tick does not show yet."""
        query = (select(ticks.c.schedule, ticks.c.scheduled_at, ticks.c.job_id, jobs.c.status)
                 .select_from(ticks.join(jobs, jobs.c.id == ticks.c.job_id))
                 .where(ticks.c.outcome == "started", ticks.c.ended_at.is_(None),
                        jobs.c.status.in_(("completed", "failed", "cancelled"))))  # fmt: skip
        with self.engine.connect() as conn:
            return [EndedRun(r.schedule, as_utc(r.scheduled_at), r.job_id, r.status) for r in conn.execute(query)]

    def mark_ended(self, run: EndedRun, sink_status: str, now: datetime) -> None:
        """Record a run's job end and what its sink step does next (``pending``, ``skipped``, ``none``)."""
        with self.engine.begin() as conn:
            conn.execute(update(ticks).where(_key(run.schedule, run.scheduled_at), ticks.c.ended_at.is_(None))
                         .values(job_status=run.job_status, ended_at=now, sink_status=sink_status,
                                 sink_next_at=now))  # fmt: skip

    def due_sinks(self, now: datetime) -> list[TickInfo]:
        """Ticks whose sink is pending and due (its back-off passed), oldest first."""
        query = select(ticks).where(ticks.c.sink_status == "pending", ticks.c.sink_next_at <= now)
        with self.engine.connect() as conn:
            return [_tick(r) for r in conn.execute(query.order_by(ticks.c.scheduled_at))]

    def claim_sink(self, schedule: str, at: datetime, now: datetime, states_from: Sequence[str] = ("pending",)) -> bool:
        """Take a tick's sink step (pending -> running); ``sink-retry`` takes a done or failed one too."""
        with self.engine.begin() as conn:
            res = conn.execute(update(ticks).where(_key(schedule, at), ticks.c.sink_status.in_(list(states_from)),
                                                   ticks.c.ended_at.is_not(None))
                               .values(sink_status="running", sink_at=now))  # fmt: skip
        return bool(res.rowcount)

    def sink_done(self, schedule: str, at: datetime, target: str, rows: int, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(ticks).where(_key(schedule, at)).values(
                sink_status="done", sink_target=target, sink_rows=rows, sink_error=None, sink_at=now,
                sink_attempts=ticks.c.sink_attempts + 1))  # fmt: skip

    def sink_failed(self, schedule: str, at: datetime, error: str, retry_at: datetime | None, now: datetime,
                    target: str | None = None) -> None:  # fmt: skip
        """Record a failed sink attempt: pending again at ``retry_at``, or failed for good when None."""
        status = "failed" if retry_at is None else "pending"
        with self.engine.begin() as conn:
            conn.execute(update(ticks).where(_key(schedule, at)).values(
                sink_status=status, sink_error=error, sink_next_at=retry_at, sink_at=now, sink_target=target,
                sink_attempts=ticks.c.sink_attempts + 1))  # fmt: skip

    def release_sinks(self, keep: Iterable[tuple[str, datetime]]) -> int:
        """Put sinks left running (by a scheduler that died) back to pending, except ``keep``; how many."""
        keep = set(keep)
        with self.engine.begin() as conn:
            rows = conn.execute(select(ticks.c.schedule, ticks.c.scheduled_at).where(ticks.c.sink_status == "running"))
            stuck = [(s, as_utc(a)) for s, a in rows if (s, as_utc(a)) not in keep]
            for schedule, at in stuck:
                conn.execute(update(ticks).where(_key(schedule, at), ticks.c.sink_status == "running")
                             .values(sink_status="pending"))  # fmt: skip
        return len(stuck)

    # the scheduler's lease ---------------------------------------------------------------------
    def _now(self, conn: Connection) -> datetime:
        if conn.dialect.name == "postgresql":
            return as_utc(conn.execute(select(func.now())).scalar_one())
        return utcnow()

    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``: held when the caller holds it already,
        or its holder let it expire; False while someone else holds it."""
        with self.engine.begin() as conn:
            now = self._now(conn)
            expires = now + timedelta(seconds=seconds)
            mine_or_free = or_(leases.c.holder == holder, leases.c.expires_at < now)
            acquired = case((leases.c.holder == holder, leases.c.acquired_at), else_=now)
            res = conn.execute(update(leases).where(leases.c.name == name, mine_or_free)
                               .values(holder=holder, expires_at=expires, acquired_at=acquired))  # fmt: skip
            if res.rowcount:
                return True
            row = {"name": name, "holder": holder, "acquired_at": now, "expires_at": expires}
            return self._insert_ignoring(conn, leases, [row]) == 1

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (a clean stop), so a standby takes over without waiting."""
        with self.engine.begin() as conn:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """Who holds the lease and until when (None: nobody ever took it)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)).first()
        return None if row is None else (row.holder, as_utc(row.expires_at))
