"""Starting the processes the integration tests need: workers, a supervised fleet, Flower.

The product keeps what ``sluice demo`` and the benchmark use (:mod:`sluice.process`); what only
the tests need is here. Every process a test starts goes through :func:`spawn`, which counts it
(the end of the session prints the counts) and leaves out of its environment what the test
process set for itself alone (``tests.conftest.SESSION_ONLY_ENV``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sluice.celery_app import create_app
from sluice.process import stop_worker, wait_for_worker, worker_command
from sluice.settings import Settings
from tests.conftest import SESSION_ONLY_ENV, settings_env

T = TypeVar("T")

__all__ = [
    "fleet_command", "spawn", "start_fleet", "start_ready_worker", "start_worker", "started", "stop_worker",
    "wait_for_worker",
]  # fmt: skip

#: Processes started this session, by kind: "worker" (a process that loads models), "supervisor", "flower".
started: Counter[str] = Counter()


def fleet_command(models: list[str], gpus: str, host: str, device: str | None = None) -> list[str]:
    """``sluice worker --gpus``: a supervisor whose children are named ``gpu<id>@host`` / ``cpu<n>@host``."""
    cmd = [sys.executable, "-m", "sluice.cli", "worker", "--gpus", gpus, "--hostname", host, "--loglevel", "WARNING"]
    if device:
        cmd += ["--device", device]
    if models:
        cmd += ["--models", ",".join(models)]
    return cmd


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, kind: str, count: int = 1) -> subprocess.Popen[bytes]:
    """Run ``cmd`` with ``env`` added to this environment, its output appended to ``log_path``."""
    started[kind] += count
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY_ENV}
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT)


def start_worker(
    env: dict[str, str], models: list[str], log_path: Path, hostname: str | None = None, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """One ``sluice worker`` process on the CPU."""
    return spawn([*worker_command(models, hostname=hostname), *extra], env, log_path, "worker")


def start_ready_worker(settings: Settings, models: list[str], log_path: Path, hostname: str) -> subprocess.Popen[bytes]:
    """:func:`start_worker` with ``settings``'s environment, returned once it answers a ping; should it
    not, it is stopped and its log's tail printed before the error is raised."""
    proc = start_worker(settings_env(settings), models, log_path, hostname=hostname)
    try:
        wait_for_worker(create_app(settings), hostname, proc)
    except Exception:
        stop_worker(proc)
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    return proc


def start_fleet(
    env: dict[str, str], models: list[str], gpus: str, host: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """``sluice worker --gpus <ids> --device cpu``: a supervisor and one pinned worker per id."""
    started["worker"] += len(gpus.split(","))
    return spawn(fleet_command(models, gpus, host, device="cpu"), env, log_path, "supervisor")


def wait_until(check: Callable[[], T], timeout: float, what: str, poll_s: float = 0.05) -> T:
    """``check()``'s first truthy value, polled every ``poll_s`` until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what} within {timeout}s")
