"""Flower on the test broker: its API answers with basic auth and refuses without; ``sluice flower``."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.errors import ConfigError
from sluice.process import flower_command
from sluice.settings import Settings
from tests.launch import spawn

USER, PASSWORD = "watcher", "not-a-default-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flower exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            if get(url) == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture(params=["celery", "sluice"])
def flower(request: pytest.FixtureRequest, broker_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Flower started as the docs say (``celery ... flower --basic-auth``) and as ``sluice flower``."""
    port = free_port()
    env = {"SLUICE_BROKER_URL": broker_url, "SLUICE_VAR_DIR": str(tmp_path)}
    if request.param == "celery":
        cmd = [sys.executable, "-m", "celery", "-A", "sluice.celery_app", "flower", "--address=127.0.0.1",
               f"--port={port}", f"--basic-auth={USER}:{PASSWORD}"]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "sluice.cli", "flower", "--port", str(port)]
        env["SLUICE_FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
    log = tmp_path / "flower.log"
    proc = spawn(cmd, env, log, "flower")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthcheck", proc, log)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"flower" in argv  # `sluice flower` exec'd flower in its own place
        if request.param == "sluice":  # the password travelled in the environment, not argv
            assert not any(PASSWORD.encode() in a for a in argv)
        yield request.param, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_api_needs_basic_auth(flower: tuple[str, int]) -> None:
    _how, port = flower
    url = f"http://127.0.0.1:{port}/api/workers"
    assert get(url) == 401
    assert get(url, (USER, "wrong")) == 401
    assert get(url, (USER, PASSWORD)) == 200


def test_flower_command_requires_auth_unless_told() -> None:
    with pytest.raises(ConfigError, match="SLUICE_FLOWER_BASIC_AUTH"):
        flower_command(Settings(flower_basic_auth=None))
    with pytest.raises(ConfigError, match="user:password"):
        flower_command(Settings(flower_basic_auth="no-colon"))
    argv, env = flower_command(Settings(flower_basic_auth=f"{USER}:{PASSWORD}"), port=5601, extra=["--", "--debug"])
    assert env["FLOWER_BASIC_AUTH"] == f"{USER}:{PASSWORD}" and not any(PASSWORD in a for a in argv)
    assert argv[-3:] == ["--address=127.0.0.1", "--port=5601", "--debug"]
    _argv, env = flower_command(Settings(flower_basic_auth=None), no_auth=True)
    assert "FLOWER_BASIC_AUTH" not in env


def test_sluice_flower_refuses_to_start_without_auth() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_FLOWER_BASIC_AUTH"}
    res = subprocess.run([sys.executable, "-m", "sluice.cli", "flower"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 1 and "SLUICE_FLOWER_BASIC_AUTH" in res.stderr
