"""``sluice schedules check``: the schedules file, and for each schedule what it depends on.

Beyond the file itself (:mod:`sluice.schedules.config`): the model is registered and takes the
params, a SQL source answers its query (its first row is read, with ``:since`` at the epoch), a
file source matches files (a warning when it matches none now: files may arrive later), a file
sink's directory can be created and written, a table sink's database answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sluice.clock import utcnow
from sluice.registry import load_registry
from sluice.schedules.config import FileSink, Schedule, SqlSource, TableSink
from sluice.schedules.due import EPOCH
from sluice.schedules.runs import message, source_files, source_items
from sluice.settings import Settings


@dataclass
class Report:
    """What ``check`` found for one schedule: problems (to fix) and warnings (worth a look)."""

    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_schedule(schedule: Schedule, settings: Settings) -> Report:
    report = Report(schedule.name)
    _model(schedule, settings, report)
    _source(schedule, report)
    if isinstance(schedule.sink, FileSink):
        _file_sink(schedule.sink, report)
    elif isinstance(schedule.sink, TableSink):
        _table_sink(schedule.sink, report)
    return report


def _model(schedule: Schedule, settings: Settings, report: Report) -> None:
    from sluice.families import family_for

    try:
        spec = load_registry(settings.models_file).get(schedule.model)
        family_for(spec.task).validate_params(dict(schedule.params), spec)
    except Exception as exc:
        report.problems.append(f"model: {message(exc)}")


def _source(schedule: Schedule, report: Report) -> None:
    src = schedule.source
    if not isinstance(src, SqlSource):
        if not source_files(src.path):
            report.warnings.append(f"source: {src.path!r} matches no files now (runs skip until some arrive)")
        return
    try:
        rows = source_items(schedule, src.since or EPOCH, utcnow())
        next(rows, None)
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    except Exception as exc:
        report.problems.append(f"source: {message(exc)}")


def _file_sink(sink: FileSink, report: Report) -> None:
    """The directory part before the first placeholder must be (or become) a writable directory."""
    prefix = sink.path.split("{", 1)[0]
    existing = Path(prefix) if prefix.endswith(("/", os.sep)) else Path(prefix).parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        report.problems.append(f"sink: cannot create files under {str(existing)!r} (not a writable directory)")


def _table_sink(sink: TableSink, report: Report) -> None:
    from sluice.sinks import check_table_target

    try:
        check_table_target(sink.url)
    except Exception as exc:
        report.problems.append(f"sink: the database does not answer: {message(exc)}")
