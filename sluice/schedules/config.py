"""The schedules file (``SLUICE_SCHEDULES_FILE``, TOML): one ``[schedules.NAME]`` table each, read
into frozen dataclasses; every problem is reported at once, each saying what to fix.

Checking here is about the file alone (cron syntax, time zone, shapes of source and sink);
whether the model is registered and the source reachable is ``sluice schedules check``'s
(:mod:`sluice.schedules.commands`). A database URL may be given as ``url_env``, the name of an
environment variable that holds it, to keep passwords out of the file.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from sluice.errors import ConfigError
from sluice.exports import EXTENSIONS

#: A schedule's name: it goes into file names (``{schedule}``) and metric-free log lines.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: A sink table, optionally schema-qualified; quoted by SQLAlchemy, but kept plain on purpose.
TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
#: Default catch-up window: long enough for a standby scheduler to take over (seconds) without
#: missing a tick, short enough that a scheduler down for hours does not start a burst of stale runs.
DEFAULT_CATCHUP = timedelta(seconds=60)
#: Placeholders a file sink's path may hold.
PATH_FIELDS = ("schedule", "date", "time", "job")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_KEYS = {"cron", "timezone", "model", "params", "priority", "source", "sink", "overlap", "catchup", "callback_url"}


class Overlap(StrEnum):
    """What a due tick does while the schedule's previous run is still going (Temporal's names)."""

    SKIP = "skip"  # record the tick as skipped (Kubernetes CronJob: Forbid)
    BUFFER_ONE = "buffer_one"  # run once after the current run ends; further ticks skip
    ALLOW = "allow"  # run alongside (Kubernetes: Allow)
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the running job, start the new one (Kubernetes: Replace)


@dataclass(frozen=True)
class SqlSource:
    """Rows of a query on the user's database; ``:since`` binds the last successful run's time."""

    url: str
    sql: str
    key_column: str | None = None
    text_column: str | None = None
    #: ``:since`` of the first run (default: the epoch)
    since: datetime | None = None


@dataclass(frozen=True)
class FileSource:
    """Input files: one path, a directory, or a glob (expanded in sorted order at each run)."""

    path: str
    key_column: str | None = None
    text_column: str | None = None


@dataclass(frozen=True)
class FileSink:
    """A results file (parquet, csv, jsonl by extension); ``{schedule}``, ``{date}``, ``{time}``, ``{job}``."""

    path: str


@dataclass(frozen=True)
class TableSink:
    """An upsert into ``table`` on the user's database."""

    table: str
    url: str


Source = SqlSource | FileSource
Sink = FileSink | TableSink


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    model: str
    source: Source
    timezone: str = "UTC"
    params: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    sink: Sink | None = None
    overlap: Overlap = Overlap.SKIP
    catchup: timedelta = DEFAULT_CATCHUP
    callback_url: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def with_seconds(self) -> bool:
        """Six fields: the first one is the second (``*/10 * * * * *`` = every 10 s)."""
        return len(self.cron.split()) == 6


class ScheduleConfigError(ConfigError):
    """The schedules file is invalid; ``problems`` lists each thing to fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"{source}: {listed} (`sluice schedules check` lists every problem)")


def parse_duration(value: object) -> timedelta:
    """``90`` (seconds), ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    match = _DURATION.match(value.strip()) if isinstance(value, str) and value.strip() else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration; write seconds (90) or e.g. '90s', '15m', '1h30m', '2d'")
    d, h, m, s = (int(g or 0) for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


def cron_problem(cron: object) -> str | None:
    """What is wrong with a cron expression (None: nothing)."""
    if not isinstance(cron, str) or not cron.strip():
        return 'cron is missing; write e.g. cron = "0 2 * * *" (5 fields) or "*/10 * * * * *" (seconds first)'
    n = len(cron.split())
    if n not in (5, 6):
        return (f"cron {cron!r} has {n} fields; write 5 (minute hour day month weekday) or 6 with the "
                "seconds first (\"*/10 * * * * *\" = every 10 s)")  # fmt: skip
    if not croniter.is_valid(cron, second_at_beginning=n == 6):
        fields_ = "second minute hour day month weekday" if n == 6 else "minute hour day month weekday"
        return f"cron {cron!r} is not a valid expression ({fields_}); see `man 5 crontab`"
    return None


def load_schedules(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Schedule]:
    """The schedules of a file, by name; :class:`ScheduleConfigError` lists every problem."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScheduleConfigError(str(path), ["the file does not exist; fix SLUICE_SCHEDULES_FILE"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleConfigError(str(path), [f"not valid TOML ({exc})"]) from None
    schedules, problems = parse_schedules(data, os.environ if env is None else env)
    if problems:
        raise ScheduleConfigError(str(path), problems)
    return schedules


def parse_schedules(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Schedule], list[str]]:
    """Schedules from parsed TOML, and the problems found (every one, not just the first)."""
    tables = data.get("schedules", {})
    problems = [f"unknown top-level key {k!r}; schedules go in [schedules.NAME] tables" for k in data
                if k != "schedules"]  # fmt: skip
    if not isinstance(tables, dict):
        return {}, [*problems, "`schedules` must be a table of [schedules.NAME] tables"]
    found: dict[str, Schedule] = {}
    for name, table in tables.items():
        mine: list[str] = []
        schedule = _schedule(name, table, env, mine)
        problems += [f"schedules.{name}: {p}" for p in mine]
        if schedule is not None and not mine:
            found[name] = schedule
    return found, problems


def _schedule(name: str, table: object, env: Mapping[str, str], problems: list[str]) -> Schedule | None:
    if not NAME.match(name):
        problems.append("a name is letters, digits, '.', '_' and '-' (up to 128), starting with a letter or digit")
    if not isinstance(table, dict):
        problems.append("must be a table: [schedules.NAME] with cron, model and source")
        return None
    problems += [f"unknown key {k!r} (known: {', '.join(sorted(_KEYS))})" for k in table if k not in _KEYS]
    if (bad := cron_problem(table.get("cron"))) is not None:
        problems.append(bad)
    zone = table.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        problems.append(f'timezone {zone!r} is not an IANA time zone; write e.g. "Europe/Berlin" or "UTC"')
    model = table.get("model")
    if not isinstance(model, str) or not model:
        problems.append("model is missing; name a registered model (`sluice models` lists them)")
    params = table.get("params", {})
    if not isinstance(params, dict):
        problems.append('params must be a table, e.g. params = { candidate_labels = ["a", "b"] }')
    priority = table.get("priority", 0)
    if type(priority) is not int or not 0 <= priority <= 9:
        problems.append(f"priority must be a whole number 0-9 (9 is most urgent), got {priority!r}")
    overlap = table.get("overlap", "skip")
    if overlap not in set(Overlap):
        problems.append(f"overlap {overlap!r} is not one of {', '.join(Overlap)}")
    catchup = _duration(table.get("catchup", int(DEFAULT_CATCHUP.total_seconds())), "catchup", problems)
    callback = table.get("callback_url")
    if callback is not None and not (isinstance(callback, str) and callback.startswith(("http://", "https://"))):
        problems.append("callback_url must be an http(s) URL")
    source = _source(table.get("source"), env, problems)
    sink = _sink(table.get("sink"), env, problems)
    if problems or source is None:
        return None
    return Schedule(name=name, cron=" ".join(table["cron"].split()), model=str(model), source=source, timezone=zone,
                    params=params, priority=priority, sink=sink, overlap=Overlap(overlap), catchup=catchup,
                    callback_url=callback)  # fmt: skip


def _duration(value: object, key: str, problems: list[str]) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.append(f"{key}: {exc}")
        return DEFAULT_CATCHUP


def _url(table: dict[str, Any], where: str, env: Mapping[str, str], problems: list[str]) -> str | None:
    """``url``, or the value of the environment variable ``url_env`` names."""
    if isinstance(table.get("url"), str) and table["url"]:
        return str(table["url"])
    var = table.get("url_env")
    if isinstance(var, str) and var:
        if env.get(var):
            return env[var]
        problems.append(f"{where}.url_env: the environment variable {var} is not set; set it to the database URL")
        return None
    problems.append(f"{where} needs url (a SQLAlchemy URL) or url_env (a variable holding one)")
    return None


def _columns(table: dict[str, Any], where: str, problems: list[str]) -> tuple[str | None, str | None]:
    cols = [table.get("key_column"), table.get("text_column")]
    for key, value in zip(("key_column", "text_column"), cols, strict=True):
        if value is not None and not (isinstance(value, str) and value):
            problems.append(f"{where}.{key} must be a column name")
    return cols[0], cols[1]


def _source(table: object, env: Mapping[str, str], problems: list[str]) -> Source | None:
    allowed = {"sql", "url", "url_env", "key_column", "text_column", "since", "path"}
    if not isinstance(table, dict) or ("sql" in table) == ("path" in table):
        problems.append("source must be a table with either sql (and url) or path, e.g. "
                        "source = { path = \"/data/inbox/*.jsonl\" }")  # fmt: skip
        return None
    problems += [f"source: unknown key {k!r} (known: {', '.join(sorted(allowed))})" for k in table if k not in allowed]
    key, text = _columns(table, "source", problems)
    if "path" in table:
        if not isinstance(table["path"], str) or not table["path"]:
            problems.append("source.path must be a file, directory or glob")
            return None
        return FileSource(table["path"], key, text)
    if not isinstance(table["sql"], str) or not table["sql"].strip():
        problems.append('source.sql must be a query, e.g. "select id, body from t where updated_at > :since"')
    url = _url(table, "source", env, problems)
    since = _since(table.get("since"), problems)
    return None if url is None else SqlSource(url, str(table["sql"]), key, text, since)


def _since(value: object, problems: list[str]) -> datetime | None:
    """The first run's ``:since``: a TOML date or date-time, or an ISO string; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            problems.append(f"source.since {value!r} is not an ISO date-time; write e.g. 2026-01-01T00:00:00Z")
            return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        problems.append("source.since must be a date-time, e.g. since = 2026-01-01T00:00:00Z")
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sink(table: object, env: Mapping[str, str], problems: list[str]) -> Sink | None:
    if table is None:
        return None
    if not isinstance(table, dict) or ("path" in table) == ("table" in table):
        problems.append("sink must be a table with either path or table (and url), e.g. "
                        "sink = { path = \"/data/out/{schedule}/{date}.parquet\" }")  # fmt: skip
        return None
    allowed = {"path"} if "path" in table else {"table", "url", "url_env"}
    problems += [f"sink: unknown key {k!r} (known: {', '.join(sorted(allowed))})" for k in table if k not in allowed]
    if "path" in table:
        return _file_sink(table["path"], problems)
    name = table["table"]
    if not isinstance(name, str) or not TABLE.match(name):
        problems.append(f"sink.table {name!r} must be a plain table name (letters, digits, _), optionally schema.table")
        return None
    url = _url(table, "sink", env, problems)
    return None if url is None else TableSink(name, url)


def _file_sink(path: object, problems: list[str]) -> FileSink | None:
    if not isinstance(path, str) or not path:
        problems.append("sink.path must be a file path")
        return None
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(path) if f is not None]
    except ValueError as exc:
        problems.append(f"sink.path {path!r}: {exc}; write placeholders as {{schedule}}, {{date}}, {{time}}, {{job}}")
        return None
    problems += [f"sink.path: unknown placeholder {{{n}}} (known: {', '.join(PATH_FIELDS)})" for n in names
                 if n not in PATH_FIELDS]  # fmt: skip
    if Path(path).suffix.lower() not in EXTENSIONS:
        problems.append(f"sink.path {path!r} must end in one of {', '.join(EXTENSIONS)} (the format)")
    return FileSink(path)
