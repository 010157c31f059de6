"""``sluice scheduler`` and ``sluice schedules list|show|history|run|pause|resume|check|sink-retry``.

Imported to build the CLI's parser: everything heavier than argparse is imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sluice.cli_errors import EXIT_ERROR, EXIT_INVALID
from sluice.errors import ConfigError, ValidationError
from sluice.settings import Settings

if TYPE_CHECKING:
    from sluice.ledger.schedules import TickInfo
    from sluice.schedules.config import Schedule


def add_commands(sub: Any) -> None:
    """Add ``sluice scheduler`` and ``sluice schedules ...`` to the CLI's subparsers."""
    p = sub.add_parser("scheduler", help="run schedules (SLUICE_SCHEDULES_FILE) and the periodic reconcile; "
                                         "start any number, one is active")  # fmt: skip
    p.add_argument("--reconcile-every", type=float, default=60.0, metavar="SECONDS",
                   help="reconcile this often while active (default 60; 0: never)")  # fmt: skip
    p.add_argument("--holder", help="this scheduler's name on the lease (default host:pid)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("schedules", help="list, inspect, run, pause and check schedules")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every schedule: cron, model, state, next and last run").set_defaults(func=cmd_list)
    actions.add_parser("check", help="validate the schedules file, models, sources and sinks").set_defaults(
        func=cmd_check)  # fmt: skip
    for name, func, help_ in [
        ("show", cmd_show, "one schedule: its settings, state, next fire times, recent ticks"),
        ("run", cmd_run, "run a schedule now (its overlap policy applies); prints the job id"),
        ("pause", cmd_pause, "stop firing (fire times while paused are neither run nor recorded)"),
        ("resume", cmd_resume, "fire again, from the next fire time on"),
    ]:
        q = actions.add_parser(name, help=help_)
        q.add_argument("name")
        q.set_defaults(func=func)
    q = actions.add_parser("history", help="a schedule's ticks, newest first: outcome, job, sink")
    q.add_argument("name")
    q.add_argument("--limit", type=int, default=20)
    q.set_defaults(func=cmd_history)
    q = actions.add_parser("sink-retry", help="write a run's results to its sink again (default: the latest "
                                              "failed one)")  # fmt: skip
    q.add_argument("name")
    q.add_argument("--tick", metavar="TIME", help="the run's scheduled time, as `history` prints it")
    q.set_defaults(func=cmd_sink_retry)


# helpers ----------------------------------------------------------------------------------------
def _schedules(settings: Settings) -> dict[str, Schedule]:
    from sluice.schedules.config import load_schedules

    if settings.schedules_file is None:
        raise ConfigError('SLUICE_SCHEDULES_FILE is not set; point it at a schedules TOML (README, "Schedules")')
    return load_schedules(settings.schedules_file)


def _schedule(settings: Settings, name: str) -> Schedule:
    schedules = _schedules(settings)
    if name not in schedules:
        raise ValidationError(f"no schedule {name!r} in {settings.schedules_file} (it has: "
                              f"{', '.join(sorted(schedules)) or 'none'})")  # fmt: skip
    return schedules[name]


def _when(at: datetime | None) -> str:
    if at is None:
        return "-"
    text = at.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"


def _parse_when(raw: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw.strip().replace(" ", "T"))
    except ValueError:
        raise ValidationError(
            f"--tick {raw!r} is not a time; give it as `history` prints it (2026-01-01T02:00:00Z)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _store(settings: Settings) -> Any:
    from sluice.ledger.schedules import SchedulesLedger

    return SchedulesLedger.for_settings(settings)


def _runner(settings: Settings) -> Any:
    from producer.client import Client
    from sluice.schedules.runs import Runner
    from sluice.schedules.scheduler import default_holder

    client = Client(settings)
    return Runner(settings, client, _store(settings), f"cli:{default_holder()}")


def _tick_line(t: TickInfo) -> str:
    sink = t.sink_status or "-"
    if t.sink_rows is not None and t.sink_status == "done":
        sink = f"done ({t.sink_rows} rows)"
    note = t.reason or t.sink_error or ""
    return f"{_when(t.scheduled_at):27} {t.trigger:6} {t.outcome:8} {t.job_id or '-':36}  {sink:16} {note}"


# commands ---------------------------------------------------------------------------------------
def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from sluice.logs import configure_logging
    from sluice.metrics import SchedulerMetrics, serve
    from sluice.schedules.scheduler import Scheduler
    from sluice.webhooks import start_deliverer

    configure_logging(settings, "INFO")
    if settings.schedules_file is not None:
        _schedules(settings)  # an invalid file stops the start, with every problem listed
    metrics = SchedulerMetrics()
    if settings.metrics_port:
        serve(metrics.registry, settings.metrics_port, settings.metrics_host)
    scheduler = Scheduler(settings, holder=args.holder, reconcile_every=args.reconcile_every or None, metrics=metrics)
    start_deliverer(scheduler.client.ledger, settings)  # job callbacks, as `sluice reconcile --every` sends them
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler.run(stop)
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.clock import utcnow
    from sluice.schedules.due import next_fire

    schedules = _schedules(settings)
    store = _store(settings)
    states = store.ensure_schedules(schedules, utcnow()) if schedules else {}
    for name, s in sorted(schedules.items()):
        paused = states[name].paused
        upcoming = "paused" if paused else _when(next_fire(s.cron, s.tz, utcnow()))
        last = store.ticks(name, 1)
        recent = f"{last[0].outcome} {_when(last[0].scheduled_at)}" if last else "never ran"
        print(f"{name:24} {s.cron:18} {s.timezone:16} {s.model:20} {s.overlap.value:15} next {upcoming:27} "
              f"last {recent}")  # fmt: skip
    if not schedules:
        print(f"no schedules in {settings.schedules_file}")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.clock import utcnow
    from sluice.logs import Redactor
    from sluice.schedules.due import fire_times, next_fire

    s = _schedule(settings, args.name)
    store = _store(settings)
    state = store.ensure_schedules([s.name], utcnow())[s.name]
    redact = Redactor()
    print(f"schedule {s.name}: cron {s.cron!r} in {s.timezone}, model {s.model}, priority {s.priority}, "
          f"overlap {s.overlap.value}, catch-up {s.catchup.total_seconds():.0f} s")  # fmt: skip
    print(f"  params: {dict(s.params)}")
    print(f"  source: {redact(repr(s.source))}")
    print(f"  sink:   {redact(repr(s.sink)) if s.sink else 'none'}")
    print(f"  state:  {'paused since ' + _when(state.paused_at) if state.paused else 'active'}")
    first = next_fire(s.cron, s.tz, utcnow())
    upcoming = [first, *fire_times(s.cron, s.tz, first, datetime.max.replace(tzinfo=UTC), limit=2)]
    print(f"  next:   {', '.join(_when(t) for t in upcoming)}")
    counts = store.outcome_counts(s.name)
    print(f"  ticks:  {', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none yet'}")
    for tick in store.ticks(s.name, 5):
        print(f"  {_tick_line(tick)}")
    return 0


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    ticks = _store(settings).ticks(args.name, args.limit)
    print(f"{'scheduled (UTC)':27} {'by':6} {'outcome':8} {'job':36}  {'sink':16} note")
    for tick in ticks:
        print(_tick_line(tick))
    if not ticks:
        print(f"no ticks for {args.name!r} yet")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.clock import utcnow
    from sluice.schedules.due import Action, decide
    from sluice.schedules.scheduler import runs_of

    s = _schedule(settings, args.name)
    runner = _runner(settings)
    now = utcnow()
    going = runner.store.open_runs().get(s.name, [])
    decision = decide(s.overlap, now, now, s.catchup, runs_of(going))
    if decision.action in (Action.START, Action.REPLACE):
        if decision.action is Action.REPLACE:
            runner.cancel_going(s, going)
        outcome = runner.start(s, now, "manual", decision.reason)
    else:
        outcome = {Action.BUFFER: "buffered", Action.SKIP: "skipped"}[decision.action]
        runner.record(s.name, now, "manual", outcome, decision.reason)
    tick = runner.store.tick(s.name, now)
    print(f"{outcome}: {tick.job_id if tick and tick.job_id else tick.reason if tick else ''}")
    if outcome in ("started", "buffered"):
        print("its sink runs when the job ends, by the active `sluice scheduler`", file=sys.stderr)
        return 0
    return EXIT_ERROR


def _pause(args: argparse.Namespace, settings: Settings, paused: bool) -> int:
    from sluice.clock import utcnow

    _schedule(settings, args.name)
    changed = _store(settings).set_paused(args.name, paused, utcnow())
    word = "paused" if paused else "resumed"
    print(word if changed else f"already {word}")
    return 0


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _pause(args, settings, True)


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _pause(args, settings, False)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.schedules.check import check_schedule
    from sluice.schedules.config import ScheduleConfigError

    try:
        schedules = _schedules(settings)
    except ScheduleConfigError as exc:
        print(f"{settings.schedules_file}: invalid")
        for problem in exc.problems:
            print(f"  - {problem}")
        return EXIT_INVALID
    bad = 0
    for name, schedule in sorted(schedules.items()):
        report = check_schedule(schedule, settings)
        bad += bool(report.problems)
        print(f"{name}: {'ok' if not report.problems else 'problems'}")
        for line in report.problems:
            print(f"  - {line}")
        for line in report.warnings:
            print(f"  ! {line}")
    print(f"{len(schedules)} schedule(s), {bad} with problems" if schedules else "no schedules")
    return EXIT_INVALID if bad else 0


def cmd_sink_retry(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.clock import utcnow

    s = _schedule(settings, args.name)
    if s.sink is None:
        raise ValidationError(f"schedule {s.name} has no sink")
    runner = _runner(settings)
    if args.tick:
        tick = runner.store.tick(s.name, _parse_when(args.tick))
    else:
        tick = next((t for t in runner.store.ticks(s.name, 1000) if t.sink_status == "failed"), None)
    if tick is None or tick.job_id is None or tick.ended_at is None:
        what = f"no ended run at {args.tick}" if args.tick else "no run whose sink failed"
        raise ValidationError(f"schedule {s.name}: {what}; `sluice schedules history {s.name}` lists its runs")
    if not runner.store.claim_sink(s.name, tick.scheduled_at, utcnow(), ("failed", "done", "pending", "skipped")):
        raise ValidationError(f"the sink of {_when(tick.scheduled_at)} is running now; try again when it ends")
    ok = runner.run_sink(s, runner.store.tick(s.name, tick.scheduled_at), retry=False)
    done = runner.store.tick(s.name, tick.scheduled_at)
    print(f"{'done' if ok else 'failed'}: {done.sink_rows if ok else done.sink_error} -> {done.sink_target or '-'}")
    return 0 if ok else EXIT_ERROR
