"""Start and stop Sluice worker processes (the demo and the tests use this)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sluice.errors import SluiceError


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
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        worker_command(models, device, hostname), env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


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
