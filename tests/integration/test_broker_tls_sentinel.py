"""A broker behind TLS with a password, and a broker behind Redis Sentinel whose primary dies mid-job.

Real processes only: ``redis-server`` with TLS (a throwaway CA, a server and a client certificate
made by ``openssl``), a primary, its replica and a Sentinel (``redis-server --sentinel``), a
``sluice worker`` and ``sluice reconcile --every 1``. Bounds: a job over TLS ends within 60 s of
its submit; a wrong CA fails a submit within 15 s and shows in a worker's log within 30 s; after
the Sentinel primary is SIGKILLed (one chunk in flight) the Sentinel fails over within 20 s, the
worker makes progress again within 60 s and the job ends within 90 s, every item exactly once (its
rows by status equal the job's counters). Replication is asynchronous: a failover can lose the
last messages the primary took; here, on one machine, the replica had them all (none re-sent).

Without a ``redis-server`` built with TLS or without ``openssl`` the TLS tests skip, saying why
(under ``CI=true`` they fail instead: CI must run them).
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import func, select

from producer.client import Client
from sluice import migrate
from sluice.broker import redis_client
from sluice.celery_app import create_app
from sluice.db import Chunk, Item
from sluice.dispatch import Dispatcher
from sluice.ledger import Ledger
from sluice.recovery import reconcile
from sluice.settings import Settings
from sluice.status import ChunkStatus
from tests.conftest import CI, make_settings, settings_env
from tests.faults.redis_servers import (
    RedisProcess,
    known_replicas,
    make_tls_files,
    master_port,
    start_redis,
    start_sentinel,
    tls_unsupported,
)
from tests.launch import spawn, start_worker, stop_worker, wait_for_worker
from tests.secrets import BROKER_PASSWORD, SENTINEL_PASSWORD
from worker.messages import ENVELOPE_NOT_JSON, iter_dead_letters

PASSWORD = BROKER_PASSWORD  # must never show in a log (tests/secrets.py checks every log at the end)
FAST = {"SLUICE_HEARTBEAT_SECONDS": "1", "SLUICE_LEASE_SECONDS": "4"}
MASTER = "sluice-test"


def stop_all(started: list[RedisProcess | subprocess.Popen[bytes]]) -> None:
    """Stop what a test started, last first (Sluice processes before the servers they use)."""
    for proc in reversed(started):
        if isinstance(proc, RedisProcess):
            proc.stop()
        else:
            stop_worker(proc, timeout=5)


@pytest.fixture
def processes() -> Iterator[list[RedisProcess | subprocess.Popen[bytes]]]:
    """Everything a test starts; stopped at its end whatever happened."""
    started: list[RedisProcess | subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        stop_all(started)


def broker_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs for ``settings``' broker (``settings_env`` has the URL)."""
    env = {**settings_env(settings), **FAST}
    for name in ("broker_tls_ca_file", "broker_tls_cert_file", "broker_tls_key_file", "broker_sentinel_master"):
        if (value := getattr(settings, name)) is not None:
            env[f"SLUICE_{name.upper()}"] = str(value)
    env["SLUICE_BROKER_TLS"] = str(settings.broker_tls).lower()
    env["SLUICE_BROKER_TLS_VERIFY"] = str(settings.broker_tls_verify).lower()
    if settings.broker_sentinel_password is not None:
        env["SLUICE_BROKER_SENTINEL_PASSWORD"] = settings.broker_sentinel_password.get_secret_value()
    return env


def until(check: Callable[[], bool], timeout: float, what: str, logs: tuple[Path, ...] = ()) -> float:
    """Poll ``check`` until true; the seconds it took (fails after ``timeout``, with the logs' ends)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            tails = "".join(f"\n--- {log}:\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.exists())
            pytest.fail(f"{what}: not within {timeout}s{tails}")
        time.sleep(0.1)
    return time.monotonic() - start


def exactly_once(client: Client, job: str) -> dict[str, int]:
    """Item rows by status, checked against the job's counters."""
    with client.engine.connect() as conn:
        rows = conn.execute(select(Item.status, func.count()).where(Item.job_id == job).group_by(Item.status))
        counts = {status: n for status, n in rows}
    info = client.status(job, explain=False)
    assert (info.done, info.failed) == (counts.get("done", 0), counts.get("failed", 0))
    return counts


def running(client: Client, job: str) -> list[int]:
    with client.engine.connect() as conn:
        rows = conn.execute(select(Chunk.idx).where(Chunk.job_id == job, Chunk.status == ChunkStatus.RUNNING))
        return sorted(idx for (idx,) in rows)


def no_secrets(*logs: Path) -> None:
    for log in logs:
        text = log.read_text(errors="replace")
        assert PASSWORD not in text and SENTINEL_PASSWORD not in text, f"a password is in {log}"


@dataclass
class TlsBroker:
    """A TLS Redis with a password and client certificates; a worker that trusts its CA and one
    that was given another CA, started together (their start-up is most of these tests' time)."""

    server: RedisProcess
    settings: Settings
    wrong: Settings  # the same, but for a CA that did not sign the server's certificate
    worker: subprocess.Popen[bytes]
    log: Path
    wrong_log: Path
    wrong_started: float


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    why = tls_unsupported()
    if why is not None:
        if CI:
            pytest.fail(f"TLS broker tests cannot run: {why}; CI=true requires them", pytrace=False)
        pytest.skip(f"TLS broker tests cannot run: {why}")
    var = tmp_path_factory.mktemp("tls")
    files, other = make_tls_files(var / "certs"), make_tls_files(var / "other", "other-ca")
    started: list[RedisProcess | subprocess.Popen[bytes]] = []
    try:
        server = start_redis(var, "tls", password=PASSWORD, tls=files)
        started.append(server)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
        settings = make_settings(f"sqlite:///{var / 'tls.db'}", url, var, chunk_size=8, heartbeat_seconds=1,
                                 lease_seconds=4)  # fmt: skip
        settings = settings.model_copy(update={
            "broker_tls_ca_file": files.ca, "broker_tls_cert_file": files.client_cert,
            "broker_tls_key_file": files.client_key, "queue": f"tls-{uuid.uuid4().hex[:8]}",
        })  # fmt: skip
        wrong = settings.model_copy(update={"broker_tls_ca_file": other.ca})
        migrate.upgrade(settings)
        host, log, wrong_log = f"tls-{uuid.uuid4().hex[:6]}@tests", var / "worker.log", var / "wrong-ca.log"
        worker = start_worker(broker_env(settings), ["minilm"], log, hostname=host, extra=["--loglevel", "INFO"])
        started.append(worker)
        wrong_started = time.monotonic()
        started.append(start_worker(broker_env(wrong), [], wrong_log, hostname=f"wrong-{host}"))
        wait_for_worker(create_app(settings), host, worker, timeout=120)
        yield TlsBroker(server, settings, wrong, worker, log, wrong_log, wrong_started)
    finally:
        stop_all(started)


def test_a_job_runs_over_tls_with_a_password_and_a_client_certificate(tls_broker: TlsBroker) -> None:
    """Producer, worker, epoch marker and the worker's message guard, all over verified mutual TLS."""
    settings = tls_broker.settings
    client = Client(settings)
    start = time.monotonic()
    job = client.submit("minilm", [f"document {i} over TLS" for i in range(40)])
    assert job not in client.unsent
    until(lambda: client.status(job, explain=False).status.terminal, 60, "the job over TLS")
    took = time.monotonic() - start
    assert exactly_once(client, job) == {"done": 40}

    r = redis_client(settings.broker_url or "", settings)
    reconcile(Dispatcher(settings, Ledger.for_settings(settings)))  # sets the epoch marker over TLS
    assert r.exists(f"{settings.queue}:epoch")
    r.lpush(settings.queue, b"\xff not an envelope")  # dropped by the guard, dead-lettered over TLS
    key = f"{settings.queue}:dead-letter"
    until(lambda: bool(r.llen(key)), 30, "the malformed entry's dead letter")
    assert [e["reason"] for e in iter_dead_letters(r, key)] == [ENVELOPE_NOT_JSON]
    assert tls_broker.worker.poll() is None
    text = tls_broker.log.read_text(errors="replace")
    assert "insecure" not in text, text[-2000:]  # kombu's warning for rediss:// without verification
    no_secrets(tls_broker.log)
    print(f"\nTLS broker: 40 items, 0 lost, 0 duplicated, {took:.1f}s from submit to the job's end")


def test_a_wrong_ca_is_a_clear_error_not_a_hang(tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture) -> None:
    wrong = tls_broker.wrong
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(wrong.broker_url or "", wrong).ping()
    client = Client(wrong)
    job = client.submit("minilm", ["a", "b"])  # stored; its send fails at once
    took = time.monotonic() - start
    assert "certificate verify failed" in client.unsent[job] and PASSWORD not in client.unsent[job]
    assert took < 15, f"a submit with a wrong CA took {took:.1f}s"

    # The worker that was given the wrong CA says why it cannot connect (and keeps retrying).
    log = tls_broker.wrong_log
    until(lambda: "certificate verify failed" in log.read_text(errors="replace"), 30, "the worker's TLS error")
    shown = time.monotonic() - tls_broker.wrong_started
    no_secrets(log)

    # Verification off, explicitly: connects (to this self-signed server) and says so in the log.
    with caplog.at_level(logging.WARNING, "sluice.broker"):
        unverified = wrong.model_copy(update={"broker_tls_verify": False, "broker_tls_ca_file": None})
        assert redis_client(unverified.broker_url or "", unverified).ping()
    assert "verification of the broker" in caplog.text and PASSWORD not in caplog.text
    print(f"\nwrong CA: submit failed in {took:.1f}s with 'certificate verify failed', "
          f"a worker logged it {shown:.1f}s after its start")  # fmt: skip


def test_a_sentinel_failover_mid_job_loses_nothing_and_doubles_nothing(
    tmp_path: Path, processes: list[RedisProcess | subprocess.Popen[bytes]]
) -> None:
    """The primary is SIGKILLed with 3 of a 320-item job's 20 chunks done and the 4th in flight
    (held by the worker's hook until the kill); the Sentinel promotes the replica, the worker and
    the reconciler find it through the Sentinel, and the job ends exactly once."""
    primary = start_redis(tmp_path, "primary", password=PASSWORD)
    processes.append(primary)
    replica = start_redis(tmp_path, "replica", password=PASSWORD, replicaof=primary.port)
    processes.append(replica)
    until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20, "the replica's sync")
    sentinel = start_sentinel(tmp_path, "sentinel", primary.port, MASTER, auth_pass=PASSWORD,
                              password=SENTINEL_PASSWORD)  # fmt: skip
    processes.append(sentinel)
    until(lambda: known_replicas(sentinel, MASTER) == 1, 20, "the Sentinel discovering the replica")

    # A dead Sentinel first in the list: clients skip it.
    nodes = [f"sentinel://:{PASSWORD}@127.0.0.1:{port}/0" for port in (1, sentinel.port)]
    settings = make_settings(f"sqlite:///{tmp_path / 's.db'}", ";".join(nodes), tmp_path, chunk_size=16,
                             heartbeat_seconds=1, lease_seconds=4)  # fmt: skip
    settings = settings.model_copy(update={"broker_sentinel_master": MASTER, "queue": f"sen-{uuid.uuid4().hex[:8]}",
                                           "broker_sentinel_password": SecretStr(SENTINEL_PASSWORD)})  # fmt: skip
    migrate.upgrade(settings)
    hold = tmp_path / "hold"  # chunk 3 waits while this exists: in flight when the primary dies
    hold.touch()
    env = {**broker_env(settings), "SLUICE_HOOKS": "tests.faults.pace:PacedChunks",
           "SLUICE_TEST_HOLD": str(hold), "SLUICE_TEST_HOLD_FROM": "3"}  # fmt: skip
    host, log, rlog = f"sentinel-{uuid.uuid4().hex[:6]}@tests", tmp_path / "worker.log", tmp_path / "reconcile.log"
    worker = start_worker(env, ["minilm"], log, hostname=host, extra=["--loglevel", "INFO"])
    processes.append(worker)
    reconciler = spawn([*start_cmd(), "reconcile", "--every", "1"], env, rlog, "reconciler")
    processes.append(reconciler)
    wait_for_worker(create_app(settings), host, worker, timeout=120)

    client = Client(settings)
    n = 320
    job = client.submit("minilm", [f"document {i} " * (1 + i % 5) for i in range(n)])
    assert job not in client.unsent
    logs = (log, rlog, sentinel.log)
    until(lambda: running(client, job) == [3] and client.status(job, explain=False).finished == 48, 60,
          "chunks 0-2 done and chunk 3 held", logs)  # fmt: skip
    at_kill = client.status(job, explain=False).finished
    killed = time.monotonic()
    primary.kill()
    hold.unlink()  # chunk 3 finishes while the broker is down: its ack is lost with the primary
    failover = until(lambda: master_port(sentinel, MASTER) == replica.port, 20, "the Sentinel's failover", logs)
    until(lambda: client.status(job, explain=False).finished >= at_kill + 48, 60, "progress after the failover", logs)
    resumed = time.monotonic() - killed  # three chunks more than when it was killed: the worker is back
    until(lambda: client.status(job, explain=False).status.terminal, 90, "the job's end after the failover", logs)
    ended = time.monotonic() - killed
    assert exactly_once(client, job) == {"done": n}
    assert worker.poll() is None and reconciler.poll() is None
    resent = sum(int(line.rsplit("re-enqueued ", 1)[1].split()[0])
                 for line in rlog.read_text(errors="replace").splitlines() if "re-enqueued " in line)  # fmt: skip
    no_secrets(log, rlog)
    print(f"\nsentinel failover: {n} items, 0 lost, 0 duplicated, {at_kill} done when the primary was killed; "
          f"failover {failover:.1f}s, progress again {resumed:.1f}s, job ended {ended:.1f}s after the kill; "
          f"{resent} chunk(s) re-sent by reconcile")  # fmt: skip


def start_cmd() -> list[str]:
    """``python -m sluice.cli``."""
    from sluice.process import worker_command

    return worker_command([])[:3]
