"""Start and stop Sluice worker processes (``sluice demo`` and the benchmark), and Flower's command.

The tests' own launchers are in ``tests/launch.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sluice.errors import ConfigError, SluiceError
from sluice.settings import Settings


def worker_command(models: list[str], device: str = "cpu", hostname: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "sluice.cli", "worker", "--device", device, "--loglevel", "WARNING"]
    if models:
        cmd += ["--models", ",".join(models)]
    if hostname:
        cmd += ["--hostname", hostname]
    return cmd


def start_worker(
    env: dict[str, str], models: list[str], log_path: Path, device: str = "cpu", hostname: str | None = None
) -> subprocess.Popen[bytes]:
    return spawn(worker_command(models, device, hostname), env, log_path)


def spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run ``cmd`` with ``env`` added to this environment, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def wait_for_worker(app, hostname: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    """Block until the named worker answers a control ping (its models are loaded by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SluiceError(f"worker {hostname} exited with code {proc.returncode} before it was ready")
        replies = app.control.ping(destination=[hostname], timeout=1.0) or []
        if any(hostname in reply for reply in replies):
            return
    raise SluiceError(f"worker {hostname} did not answer within {timeout}s")


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (warm shutdown: the in-flight chunk finishes), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def flower_command(
    settings: Settings, address: str = "127.0.0.1", port: int = 5555, no_auth: bool = False, extra: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for Flower on Sluice's broker, with basic auth from the settings.

    The credentials travel in ``FLOWER_BASIC_AUTH`` (Flower reads ``FLOWER_*`` options from the
    environment), not in argv where ``ps`` shows them to every user. Note that Flower serves
    ``/metrics`` without auth even when auth is on.
    """
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if auth:
        pairs = auth.split(",")
        if not all(user and pw for user, _, pw in (p.partition(":") for p in pairs)):
            raise ConfigError("SLUICE_FLOWER_BASIC_AUTH wants user:password[,user2:password2]")
        env["FLOWER_BASIC_AUTH"] = auth
    elif not no_auth:
        raise ConfigError("Flower needs SLUICE_FLOWER_BASIC_AUTH=user:password (or --no-auth, trusted networks only)")
    argv = [sys.executable, "-m", "celery", "-A", "sluice.celery_app", "flower"]
    return [*argv, f"--address={address}", f"--port={port}", *(a for a in extra if a != "--")], env
