"""``sluice metrics`` (the cluster-wide exporter) and ``sluice top`` (the live terminal view).

This module is imported to build the CLI's parser, so it imports prometheus-client, rich, the
ledger and Redis only when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from sluice.settings import Settings

#: ``sluice metrics``' default port (workers: ``SLUICE_METRICS_PORT``; the API: its own port).
DEFAULT_PORT = 9400


def add_commands(sub: Any) -> None:
    """Add ``sluice metrics`` and ``sluice top`` to the CLI's subparsers."""
    p = sub.add_parser("metrics", help="Prometheus exporter of cluster-wide gauges (database and Redis)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("top", help="live view of workers, jobs and queues (Ctrl-C quits)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.set_defaults(func=cmd_top)


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.exporter import run_exporter
    from sluice.logs import configure_logging

    configure_logging(settings, "INFO")
    return run_exporter(settings, args.host, args.port)


def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.top import run_top

    return run_top(settings, once=args.once, interval=args.interval)
