"""The ``sluice`` command line: database, workers, jobs, results, models."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluice.cli_errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_UNREACHABLE, describe_error
from sluice.data_commands import cmd_results, cmd_submit, print_status
from sluice.errors import ConfigError
from sluice.logs import configure_logging
from sluice.settings import Settings, get_settings

__all__ = ["EXIT_INVALID", "EXIT_UNREACHABLE", "build_parser", "describe_error", "main"]

#: Exit codes (sluice/cli_errors.py), also listed in ``sluice --help``.

EPILOG = """\
exit codes:
  0    success (also a submit whose job is stored while the broker is down: it is sent later)
  1    error: a job that failed or was cancelled (--wait), a worker that is not live (--check),
       a Sluice error or an unexpected one
  2    invalid input or usage (nothing was submitted)
  3    a service is unreachable (database or broker); check it and retry
  130  interrupted
Errors are one line on stderr; --debug adds the traceback."""

#: A number at the start of a value, followed by JSON punctuation: a broken list or object.
_JSON_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_JSON_WORD = re.compile(r"(?:true|false|null|NaN|-?Infinity)")


def _looks_like_json(value: str) -> bool:
    """Whether a --param value was meant as JSON: a list, object or quoted string, or a number or
    literal followed by JSON punctuation (``0.5,``); bare words (``en``, ``1.2.3``) are strings."""
    text = value.strip()
    if text[:1] in ("[", "{", '"'):
        return True
    match = _JSON_NUMBER.match(text) or _JSON_WORD.match(text)
    return match is not None and match.end() < len(text) and text[match.end()] in ",]}: \t"


def _param(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants KEY=JSON, got {raw!r}")
    try:
        parsed = json.loads(value)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        if not _looks_like_json(value):
            return key, value  # a bare word is a string: --param lang=en
        problem = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise argparse.ArgumentTypeError(
            f"{key}: {value!r} is not valid JSON ({problem}); fix it, or quote a plain string "
            f"as JSON: --param '{key}=\"...\"'"
        ) from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key}: the JSON value is nested too deeply") from None
    try:
        json.dumps(parsed, allow_nan=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{key}: {value!r} holds NaN or Infinity, which JSON (and the database) cannot store; use null or a number"
        ) from None
    return key, parsed


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from sluice import migrate

    if args.action == "upgrade":
        migrate.upgrade(settings, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(settings, args.revision or "base")
    else:
        migrate.current(settings)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.gpus is not None:  # a supervisor of pinned worker processes; it never imports torch
        from worker.supervisor import run_supervisor

        return run_supervisor(args, settings)
    if args.workers is not None:
        raise ConfigError("--workers needs --gpus (e.g. --gpus none --workers 4)")
    from worker.main import run_worker

    overrides = {"max_batch_tokens": args.max_batch_tokens, "max_batch_size": args.max_batch_size,
                 "max_model_memory": args.max_model_memory}  # fmt: skip
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v})
    models = [m for m in (args.models or "").split(",") if m]
    queues = [q for q in (args.queues or "").split(",") if q] or None
    run_worker(settings, args.device or settings.device, models, queues, args.hostname, args.loglevel)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import Client

    client = Client(settings)
    print_status(client, client.status(args.job), sys.stdout)
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.registry import load_registry

    if getattr(args, "action", None) == "hash":  # `sluice models hash DIR`: pin a model's own code
        from sluice.remote_code import registry_snippet

        if not args.dir or not Path(args.dir).is_dir():
            raise ConfigError(f"`sluice models hash DIR` needs a model directory, got {args.dir!r}")
        print(registry_snippet(Path(args.dir)), end="")
        return 0
    registry = load_registry(settings.models_file)
    print(f"# {registry.source}")
    for spec in registry:
        print(f"{spec.name:24} {spec.task:28} {spec.path}")
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import Client

    for info in Client(settings).jobs(args.limit):
        print(f"{info.id}  {info.status.value:9} {info.finished:>7}/{info.total:<7} {info.model}")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import Client

    print("cancelled" if Client(settings).cancel(args.job) else "already ended")
    return 0


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.ledger import Ledger
    from sluice.routing import describe_worker

    rows = Ledger.for_settings(settings).load_workers(include_stale=args.all)
    if args.check:
        # A health check: the heartbeat thread reports even mid-chunk, when a solo-pool worker
        # cannot answer a Celery ping.
        live = any(r.hostname == args.check and r.live for r in rows)
        print(f"{args.check}: {'live' if live else 'not live (no fresh heartbeat)'}")
        return 0 if live else 1
    for row in rows:
        print(describe_worker(row))
    if not rows:
        print("no live workers" + ("" if args.all else " (--all shows stopped and stale ones)"))
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.dispatch import Dispatcher
    from sluice.ledger import Ledger
    from sluice.recovery import reconcile, reconcile_every

    dispatcher = Dispatcher(settings, Ledger.for_settings(settings))
    if args.every:
        configure_logging(settings, "INFO")
        reconcile_every(dispatcher, args.every, debug=getattr(args, "debug", False))
    print(f"re-enqueued {reconcile(dispatcher, include_queued=args.include_queued)} chunk(s)")
    return 0


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.broker import start_embedded, stop_embedded

    if args.action == "start":
        print(start_embedded(settings.var_dir))
    else:
        print("stopped" if stop_embedded(settings.var_dir) else "not running")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.demo import run_demo

    return run_demo(settings, n_docs=args.docs, model=args.model)


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.process import flower_command

    argv, env = flower_command(settings, args.address, args.port, args.no_auth, args.flower_args)
    os.execvpe(argv[0], argv, env)  # flower replaces this process: signals reach it directly


def _size(raw: str) -> int:
    from sluice.sizes import parse_size

    try:
        return parse_size(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number >= 1, got {raw!r}")
    return int(raw)


def _gpus(raw: str) -> str | list[str]:
    from worker.supervisor import parse_gpus

    return parse_gpus(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    debug_help = "on an error, print the traceback too (errors are one line otherwise)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="database migrations")
    p.add_argument("action", choices=["upgrade", "downgrade", "current"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("worker", help="run a Celery worker with resident models")
    p.add_argument("--device", help="cpu or cuda:N (default: SLUICE_DEVICE)")
    p.add_argument("--models", help="comma-separated registered models to preload")
    p.add_argument("--max-batch-tokens", type=int)
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-model-memory", type=_size, metavar="SIZE",
                   help="bytes of models kept resident, e.g. 2GB; least recently used on-demand models are evicted "
                        "above it, preloaded ones never (default: SLUICE_MAX_MODEL_MEMORY, no limit)")  # fmt: skip
    p.add_argument("--queues", help="comma-separated queues (default: SLUICE_QUEUE)")
    p.add_argument("--hostname")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--gpus", type=_gpus, metavar="all|none|0,1,...",
                   help="supervise one pinned worker process per GPU (CUDA_VISIBLE_DEVICES=<id>, node gpu<id>@host); "
                        "with --device cpu the ids are only pinned (CPU testing)")  # fmt: skip
    p.add_argument("--workers", type=_positive, metavar="N", help="CPU worker processes with --gpus none (default 1)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a bulk job from a file (.jsonl .csv .txt .parquet), a directory or SQL")
    p.add_argument("input", nargs="?", help="input file, or a directory (one item per file, keyed by its path)")
    p.add_argument("--sql", metavar="QUERY", help="read the items from this query (with --source-url; no input file)")
    p.add_argument("--source-url", metavar="URL", help="the SQLAlchemy URL of the database --sql reads")
    p.add_argument("--text-column", metavar="NAME", help="column read as the item's text (CSV, JSONL, Parquet, SQL)")
    p.add_argument("--key-column", metavar="NAME", help="the column kept as the item's key (default: a 'key' column)")
    p.add_argument("--model", required=True)
    p.add_argument("--param", action="append", type=_param, metavar="KEY=JSON")
    p.add_argument("--priority", type=int, default=0, choices=range(10), metavar="0-9")
    p.add_argument("--skip-invalid", action="store_true", help="store invalid items as failed instead of rejecting")
    p.add_argument("--wait", action="store_true", help="show a progress bar until the job ends")
    p.add_argument(
        "--callback-url",
        metavar="URL",
        help="POST the job's signed summary here when it ends (host on SLUICE_WEBHOOK_ALLOWED_HOSTS)",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="counts, throughput and timing of a job")
    p.add_argument("job")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("results", help="one row per item, in input order")
    p.add_argument("job")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: by -o's extension, else jsonl")
    p.add_argument("-o", "--output", help="write this file (whole or not at all); parquet needs one")
    p.add_argument("--artifacts", metavar="DIR", help="write binary results to DIR/<item>[-<n>].<ext>")
    p.set_defaults(func=cmd_results)

    for name, func, help_ in [("models", cmd_models, "registered models"), ("jobs", cmd_jobs, "recent jobs")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--limit", type=int, default=20)
        p.set_defaults(func=func)
    models_parser = sub.choices["models"]  # `sluice models hash DIR`: the code_sha256 of a model directory
    models_parser.add_argument("action", nargs="?", choices=["hash"], help="hash: print DIR's code pins as TOML")
    models_parser.add_argument("dir", nargs="?", metavar="DIR", help="a model directory (with hash)")

    p = sub.add_parser("workers", help="live workers: device, queues, resident models, memory, heartbeat")
    p.add_argument("--all", action="store_true", help="also workers that stopped or whose heartbeat is stale")
    p.add_argument("--check", metavar="NODE", help="exit 0 if worker NODE has a fresh heartbeat, else 1 (health check)")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("cancel", help="cancel a job (workers stop at the next batch)")
    p.add_argument("job")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("reconcile", help="re-enqueue chunks of gone workers, expired leases and unsent chunks")
    p.add_argument("--every", type=float, metavar="SECONDS", help="repeat forever (the Compose beat service)")
    p.add_argument("--include-queued", action="store_true", help="also resend chunks that never started")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("redis", help="the private Redis used when SLUICE_BROKER_URL is unset")
    p.add_argument("action", choices=["start", "stop"])
    p.set_defaults(func=cmd_redis)

    p = sub.add_parser("flower", help="Flower monitoring UI with basic auth (SLUICE_FLOWER_BASIC_AUTH)")
    p.add_argument("--address", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--no-auth", action="store_true", help="run without basic auth (trusted networks only)")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="further flower options, e.g. --url_prefix=flower")
    p.set_defaults(func=cmd_flower)

    from sluice.api.commands import add_commands  # `sluice api` and `sluice keys`

    add_commands(sub)
    from sluice.monitor_commands import add_commands as add_monitoring  # `sluice metrics` and `sluice top`

    add_monitoring(sub)
    from sluice.schedules.commands import add_commands as add_schedules  # `sluice scheduler` and `sluice schedules`

    add_schedules(sub)

    p = sub.add_parser("demo", help="run a bulk job end to end on the embedded defaults")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--model", default="minilm-topics")
    p.set_defaults(func=cmd_demo)

    for command in sub.choices.values():  # --debug after the command too: `sluice submit ... --debug`
        if "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; an error is one line on stderr (``--debug``: after its traceback) and an
    exit code (see ``EPILOG``)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    args.debug = debug
    settings: Settings | None = None
    try:
        settings = get_settings()
        # Warnings as bare lines (as before), or JSON with SLUICE_LOG_FORMAT=json; secrets masked.
        configure_logging(settings, "WARNING", text_format="%(message)s")
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        message, code = describe_error(exc, settings, debug)
        print(f"error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
