"""The soak's own stack: a redis-server it can restart, a database it creates and drops, a cuttable
link to PostgreSQL in a process of its own, the tiny model's registry, the supervisor and the reconciler.

Everything here is started by the soak and stopped by it; nothing touches the shared Redis at 6379.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import redis
from sqlalchemy import create_engine, text

from sluice.process import spawn
from sluice.registry import BUNDLED_REGISTRY

ADMIN_POSTGRES = os.environ.get("SLUICE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` without persistence on a fixed port; :meth:`restart` empties it."""

    def __init__(self, var: Path, port: int | None = None) -> None:
        self.var = var
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.var), "--logfile", str(self.var / "redis.log"), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the data set (queues, unacked messages, the epoch marker) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@contextlib.contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh database on the local server, dropped (WITH FORCE) on the way out."""
    admin = create_engine(ADMIN_POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        from sluice.db import get_engine

        url = admin.url.set(database=name).render_as_string(hide_password=False)
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _serve_proxy(host: str, port: int, conn: Connection) -> None:
    """In the proxy's own process: forward to PostgreSQL, obey "cut" / "restore" / "close"."""
    from tests.faults.proxy import CuttableProxy

    proxy = CuttableProxy((host, port))
    conn.send(proxy.port)
    while True:
        try:
            cmd = conn.recv()
        except EOFError:  # the soak went away
            cmd = "close"
        if cmd == "cut":
            proxy.cut()
        elif cmd == "restore":
            proxy.restore()
        elif cmd == "close":
            proxy.close()
            return
        conn.send("ok")


class ProxyProcess:
    """``tests.faults.proxy.CuttableProxy`` in a process of its own, so that the soak's submitting
    and polling never hold the GIL that the workers' database traffic goes through."""

    def __init__(self, url: str) -> None:
        target = url.rsplit("@", 1)[1].split("/", 1)[0]
        host, _, port = target.partition(":")
        self._target = f"{host}:{port or 5432}"
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_proxy, args=(host, int(port or 5432), child), daemon=True)
        self.proc.start()
        self.port = int(self._conn.recv())
        self.url = url.replace(f"@{self._target}/", f"@127.0.0.1:{self.port}/")

    def _command(self, cmd: str) -> None:
        self._conn.send(cmd)
        self._conn.recv()

    def cut(self) -> None:
        self._command("cut")

    def restore(self) -> None:
        self._command("restore")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send("close")
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def tiny_model(var: Path) -> Path:
    """The tests' 2-layer BERT text classifier (random seeded weights, WordPiece trained offline), built once."""
    path = var / "models" / "tiny-clf"
    if not (path / "config.json").exists():
        from tests.models.common import build_text_classifier

        tmp = path.with_name("tiny-clf.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_text_classifier(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path


def registry(var: Path, model: str) -> Path:
    """The bundled registry (``minilm``) plus ``tiny``, the tiny classifier, when asked for."""
    body = BUNDLED_REGISTRY.read_text(encoding="utf-8")
    if model == "tiny":
        body += f'\n[models.tiny]\ntask = "text-classification"\npath = "{tiny_model(var)}"\nmax_length = 128\n'
    path = var / "models.toml"
    path.write_text(body, encoding="utf-8")
    return path


def start_supervisor(env: dict[str, str], model: str, workers: int, host: str, log: Path) -> subprocess.Popen[bytes]:
    """``sluice worker --gpus none --workers N``: the real supervisor, restarting dead children."""
    cmd = [sys.executable, "-m", "sluice.cli", "worker", "--gpus", "none", "--workers", str(workers),
           "--models", model, "--hostname", host, "--loglevel", "INFO"]  # fmt: skip
    return spawn(cmd, env, log)


def start_reconciler(env: dict[str, str], every: float, log: Path) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", "sluice.cli", "reconcile", "--every", str(every)], env, log)


def worker_children(supervisor: subprocess.Popen[bytes]) -> dict[int, str]:
    """pid -> node name of the supervisor's live worker children."""
    found: dict[int, str] = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(supervisor.pid).children():
            with contextlib.suppress(psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                argv = child.cmdline()
                if "--hostname" in argv:
                    found[child.pid] = argv[argv.index("--hostname") + 1]
    return found


def rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only this process (it was started here)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def stop_fleet(supervisor: subprocess.Popen[bytes] | None, known: set[int], host: str, timeout: float = 90.0) -> None:
    """Warm shutdown through the supervisor; afterwards any of its children still alive (by the pids
    recorded while it ran, checked to still be a worker of this fleet) are killed one by one."""
    if supervisor is not None:
        children = set(worker_children(supervisor)) if supervisor.poll() is None else set()
        stop_process(supervisor, timeout)
        known = known | children
    for pid in sorted(known):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            argv = proc.cmdline()
            ours = "sluice.cli" in argv and any(a.endswith(f"@{host}") for a in argv)
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
