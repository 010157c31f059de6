"""Running ``sluice api`` as a real process against a test stack, with API keys made for it.

The process gets the stack's environment (``settings_env``), is started through
:func:`tests.launch.spawn` (so the session counts it), and is ready once ``/healthz`` answers,
polled with a deadline (never a blind sleep).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sluice.api.auth import key_hash, new_key
from sluice.ledger import Ledger
from sluice.settings import Settings
from tests.launch import spawn

#: keys every API test process gets: name -> (scopes, owner)
KEYS = {
    "alice": (["read", "submit"], "alice"),
    "alice-ro": (["read"], "alice"),
    "bob": (["read", "submit"], "bob"),
    "admin": (["admin", "read", "submit"], "ops"),
}


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def client(self, name: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth(name), timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_keys(settings: Settings, owners_suffix: str) -> dict[str, str]:
    """The :data:`KEYS`, stored under names and owners unique to this server (the stack's database is shared)."""
    ledger = Ledger.for_settings(settings)
    made = {}
    for name, (scopes, owner) in KEYS.items():
        key = new_key()
        assert ledger.create_key(f"{name}-{owners_suffix}", f"{owner}-{owners_suffix}", key_hash(key), key[:14], scopes)
        made[name] = key
    return made


def start_api(settings: Settings, env: dict[str, str], log: Path, timeout: float = 90.0) -> ApiServer:
    """``sluice api`` on a free loopback port, with fresh keys; returns once ``/healthz`` answers."""
    keys = make_keys(settings, uuid.uuid4().hex[:6])
    port = free_port()
    cmd = [sys.executable, "-m", "sluice.cli", "api", "--port", str(port), "--log-level", "warning"]
    proc = spawn(cmd, env, log, "api")
    server = ApiServer(f"http://127.0.0.1:{port}", proc, log, keys)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice api exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)  # not listening yet: poll again until the deadline
    stop_api(server)
    raise RuntimeError(f"sluice api did not answer /healthz within {timeout}s")


def stop_api(server: ApiServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def wait_for(check: object, what: str, timeout: float = 120.0, every: float = 0.2) -> object:
    """Call ``check()`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
