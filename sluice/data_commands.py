"""``sluice submit`` and ``sluice results``: job input in (files, directories, Parquet, SQL) and
results out (JSONL, CSV, Parquet, artifacts), and the status lines ``--wait`` prints."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sluice.clock import as_utc
from sluice.errors import ValidationError
from sluice.settings import Settings
from sluice.status import DeliveryStatus


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import Client

    client = Client(settings)
    # The client logs an unsent job as a warning; this command says so itself, once.
    unsent_warning = logging.getLogger("sluice.producer")
    only_once = _DropUnsent(client.unsent)
    unsent_warning.addFilter(only_once)
    try:
        job_id = client.submit(
            args.model, _submit_items(args), params=dict(args.param or []),
            priority=args.priority, skip_invalid=args.skip_invalid, callback_url=args.callback_url,
        )  # fmt: skip
    finally:
        unsent_warning.removeFilter(only_once)
    print(job_id, flush=True)
    if job_id in client.unsent:
        # Exit 0: the job is stored and runs once sent; a script that retried a failed submit
        # would store it twice.
        print(
            f"warning: job {job_id} is stored and queued; it will be sent when the broker is back "
            f"(`sluice reconcile --every` sends it, or run `sluice reconcile`): {client.unsent[job_id]}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    if args.wait:
        info = client.wait(job_id, progress=True)
        print_status(client, info, sys.stderr)
        return 0 if info.status.value == "completed" else 1
    return 0


def _submit_items(args: argparse.Namespace) -> Any:
    """The items of ``sluice submit``: its input file or directory, or ``--sql`` on ``--source-url``."""
    from producer.inputs import read_input

    columns = {"text_column": args.text_column, "key_column": args.key_column}
    if args.sql is None:
        if args.input is None or args.source_url is not None:
            what = "--source-url needs --sql" if args.input else "give an input file or directory, or --sql"
            raise ValidationError(f"{what} (see `sluice submit --help`)")
        return read_input(Path(args.input), **columns)
    if args.input is not None or args.source_url is None:
        what = f"--sql reads no input file (got {args.input!r})" if args.input else "--sql needs --source-url URL"
        raise ValidationError(what)
    from sluice.sources import read_sql

    return read_sql(args.source_url, args.sql, **columns)


class _DropUnsent(logging.Filter):
    """Drops the client's warning about a job in ``unsent`` (the command prints its own line)."""

    def __init__(self, unsent: dict[str, str]) -> None:
        super().__init__()
        self.unsent = unsent

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], str) and args[0] in self.unsent)


def print_status(client: Any, info: Any, out: TextIO) -> None:
    rate = f"{info.items_per_s:.1f} items/s" if info.items_per_s else "-"
    elapsed = f"{info.elapsed_s:.1f}s" if info.elapsed_s is not None else "-"
    counts = ", ".join(f"{k}={v}" for k, v in sorted(client.item_counts(info.id).items()))
    print(f"job {info.id}  model={info.model} task={info.task} priority={info.priority}", file=out)
    print(f"  status: {info.status.value}  items: {info.finished}/{info.total} ({counts})", file=out)
    print(f"  done={info.done} failed={info.failed}  elapsed={elapsed}  throughput={rate}", file=out)
    if info.waiting_reason:
        print(f"  {info.waiting_reason}", file=out)
    delivery = client.ledger.webhook_delivery(info.id)
    if delivery is not None:
        print(f"  callback: {callback_line(delivery)}", file=out)


def callback_line(d: Any) -> str:
    """Where a job's callback stands (a :class:`~sluice.ledger.webhooks.DeliveryInfo`). The URL is
    shown without its query string, which may carry a token."""
    url = d.url.split("?", 1)[0]
    last = f"HTTP {d.last_status_code}" if d.last_status_code is not None and not d.last_error else d.last_error
    tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    if d.status is DeliveryStatus.DELIVERED:
        return f"delivered to {url} ({tries}, {last}) at {_utc(d.delivered_at)}"
    if d.status is DeliveryStatus.FAILED:
        return f"failed to reach {url} after {tries}; last: {last}"
    after = f" after {tries}; last: {last}" if d.attempts else ""
    return f"pending to {url}{after}; next attempt at {_utc(d.next_attempt_at)}"


def _utc(moment: datetime) -> str:
    return f"{as_utc(moment).astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import Client
    from sluice.exports import format_for, write_results, write_stream

    fmt = args.format or (format_for(Path(args.output)) if args.output else "jsonl")
    if fmt == "parquet" and not args.output:
        raise ValidationError("--format parquet needs a file: add -o results.parquet")
    client = Client(settings)
    rows = client.results(args.job)
    if args.artifacts:  # binary results to files, their names (relative to the directory) into the rows
        from producer.artifact_files import with_artifact_files

        rows = with_artifact_files(rows, client.artifacts(args.job), Path(args.artifacts))
    if args.output:
        write_results(rows, Path(args.output), fmt)
    else:
        write_stream(rows, sys.stdout, fmt)
    return 0
