"""Operating unattended: a real Prometheus scrapes a worker, the exporter and the API after a job;
every documented metric is served; ``sluice top --once`` shows the worker and the job; JSON logs;
and no secret reaches a log line, ``sluice workers``, ``sluice status`` or a metric.

The module runs its own worker (``SLUICE_METRICS_PORT`` set, its own queue, the stack's database
and Redis), the exporter (``sluice metrics``) and the API, all with secrets in their settings: a
password in the broker URL (Redis accepts any for its passwordless ``default`` user) and, on
PostgreSQL, in the database URL (the test server trusts loopback), Flower credentials, API keys.
Prometheus is Debian's ``prometheus`` binary: absent, the scrape test skips, or fails under CI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from pydantic import SecretStr

from producer.client import Client
from sluice.broker import redis_client
from sluice.celery_app import create_app
from sluice.cluster import priority_key
from sluice.ledger import Ledger
from sluice.metrics import SchedulerMetrics
from sluice.settings import Settings
from tests.api_server import ApiServer, free_port, start_api, stop_api, wait_for
from tests.conftest import CI, RUN_ID, settings_env
from tests.integration.conftest import Stack
from tests.launch import spawn, start_worker, stop_worker, wait_for_worker
from tests.monitoring import documented_metrics, mismatches
from tests.secrets import BOGUS_API_KEY, FLOWER_PASSWORD, PG_PASSWORD, REDIS_PASSWORD

REDIS_PW, PG_PW, FLOWER_PW, BOGUS_KEY = REDIS_PASSWORD, PG_PASSWORD, FLOWER_PASSWORD, BOGUS_API_KEY
DOCS = [f"Document {i}: the {('market', 'match', 'election', 'storm')[i % 4]} made news again." for i in range(40)]
IDLE_PRIORITY = 7


@dataclass
class Monitored:
    settings: Settings
    env: dict[str, str]
    node: str
    urls: dict[str, str]  # source -> its /metrics URL
    api: ApiServer
    logs: dict[str, Path]
    job: str = ""
    idle_job: str = ""
    idle_queue: str = ""
    secrets: list[str] = field(default_factory=list)


def _with_password(url: str, password: str) -> str:
    """``url`` with a password for its user (``default`` for Redis): only for TCP Redis and PostgreSQL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "postgresql+psycopg") or not parts.hostname:
        return url
    user = parts.username or "default"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _get(url: str) -> str:
    return httpx.get(url, timeout=10).raise_for_status().text


@pytest.fixture(scope="module")
def monitored(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """A metrics worker, the exporter and the API on the stack's services; a finished job and a waiting one."""
    var = tmp_path_factory.mktemp("monitored")
    settings = stack.settings.model_copy(update={
        "queue": f"{stack.settings.queue}-mon", "flower_basic_auth": SecretStr(f"admin:{FLOWER_PW}"),
        "database_url": _with_password(stack.settings.resolved_database_url, PG_PW),
        "broker_url": _with_password(stack.settings.broker_url or "", REDIS_PW) or None,
    })  # fmt: skip
    ports = {"worker": free_port(), "exporter": free_port()}
    env = {**settings_env(settings), "SLUICE_FLOWER_BASIC_AUTH": f"admin:{FLOWER_PW}", "SLUICE_LOG_FORMAT": "json",
           "SLUICE_HEARTBEAT_SECONDS": "1", "SLUICE_METRICS_PORT": str(ports["worker"])}  # fmt: skip
    node = f"mon-{RUN_ID}-{var.name[-4:]}@localhost"
    logs = {name: var / f"{name}.log" for name in ("worker", "exporter", "api")}
    worker = start_worker(env, ["minilm"], logs["worker"], hostname=node, extra=["--loglevel", "INFO"])
    exporter = spawn([sys.executable, "-m", "sluice.cli", "metrics", "--port", str(ports["exporter"])], env,
                     logs["exporter"], "exporter")  # fmt: skip
    api = mon = None
    try:
        api = start_api(settings, env, logs["api"])
        wait_for_worker(create_app(settings), node, worker)
        urls = {"worker": f"http://127.0.0.1:{ports['worker']}/metrics", "api": f"{api.url}/metrics",
                "exporter": f"http://127.0.0.1:{ports['exporter']}/metrics"}  # fmt: skip
        wait_for(lambda: _answers(urls["exporter"]), "the exporter's /metrics", timeout=60)
        mon = Monitored(settings, env, node, urls, api, logs)
        mon.secrets = [FLOWER_PW, BOGUS_KEY, *api.keys.values()]
        mon.secrets += [pw for pw in (REDIS_PW, PG_PW) if pw in f"{settings.broker_url} {settings.database_url}"]
        _run_jobs(mon)
        yield mon
    finally:
        stop_worker(worker)
        stop_worker(exporter)
        if api is not None:
            stop_api(api)
        if mon is not None and mon.idle_job:
            _forget_idle(mon)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _run_jobs(mon: Monitored) -> None:
    """A finished job on the metrics worker, over the API; and one waiting on a queue nobody reads."""
    with mon.api.client("alice") as http:
        answer = http.post("/jobs", json={"model": "minilm", "items": DOCS})
        assert answer.status_code == 201, answer.text
        mon.job = answer.json()["id"]
        ledger = Ledger.for_settings(mon.settings)
        wait_for(lambda: ledger.job(mon.job).status.terminal, "the job to finish", timeout=120)  # type: ignore[union-attr]
        assert http.get(f"/jobs/{mon.job}").status_code == 200
    assert httpx.get(f"{mon.api.url}/jobs", headers={"Authorization": f"Bearer {BOGUS_KEY}"}).status_code == 401
    # Another model than the running one, so that no worker's cross-job coalescing takes its chunks.
    mon.idle_queue = f"{mon.settings.queue}-idle"
    idle = Client(mon.settings.model_copy(update={"queue": mon.idle_queue}))
    items = iter([{"text": d} for d in DOCS * 4])
    mon.idle_job = idle.submit("minilm-topics", items, params={"candidate_labels": ["a", "b"]}, priority=IDLE_PRIORITY)


def _forget_idle(mon: Monitored) -> None:
    """Cancel the waiting job and delete its queue's lists, so nothing ever takes it."""
    Client(mon.settings).cancel(mon.idle_job)
    client = redis_client(mon.settings.broker_url or "", mon.settings)
    client.delete(*[priority_key(mon.idle_queue, p) for p in range(10)])


@pytest.fixture(scope="module")
def prometheus(monitored: Monitored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on a loopback port, scraping the worker, the exporter and the API every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        message = "no prometheus binary (Debian: apt-get install prometheus)"
        if CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("prometheus")
    jobs = [{"job_name": name, "static_configs": [{"targets": [urlsplit(url).netloc]}]}
            for name, url in monitored.urls.items()]  # fmt: skip
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": jobs}
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    cmd = [binary, f"--config.file={root / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
           f"--storage.tsdb.path={root / 'data'}"]  # fmt: skip
    proc = spawn(cmd, {}, root / "prometheus.log", "prometheus")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _answers(f"{url}/-/ready"), "prometheus to be ready", timeout=60)
        assert proc.poll() is None, (root / "prometheus.log").read_text()[-3000:]
        yield url
    finally:
        stop_worker(proc)


def _query(prometheus: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result: labels (without instance and job) -> value."""
    data = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).raise_for_status().json()
    found = {}
    for series in data["data"]["result"]:
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k not in ("instance", "job")))
        found[labels] = float(series["value"][1])
    return found


def _settles(prometheus: str, promql: str, expected: float, what: str) -> None:
    """Poll Prometheus until ``promql`` (one series) equals ``expected`` (a scrape every second)."""
    last: list[Any] = []

    def check() -> bool:
        last[:] = [_query(prometheus, promql)]
        return list(last[0].values()) == [expected]

    try:
        wait_for(check, what, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {promql} = {last}, expected {expected}") from None


def test_prometheus_scrapes_items_and_queue_depth_matching_the_ledger(monitored: Monitored, prometheus: str) -> None:
    ledger = Ledger.for_settings(monitored.settings)
    job = ledger.job(monitored.job)
    assert job is not None and job.status.terminal and job.done == len(DOCS)
    for outcome, expected in (("done", job.done), ("failed", job.failed)):
        promql = f'sum(sluice_items_processed_total{{job="worker",model="minilm",outcome="{outcome}"}})'
        _settles(prometheus, promql, expected, f"items {outcome}")
    queued = [c for c in ledger.cluster_stats().chunks if c.queue == monitored.idle_queue and c.status == "queued"]
    assert sum(c.chunks for c in queued) == math.ceil(len(DOCS) * 4 / monitored.settings.chunk_size)
    idle = f'sluice_queue_depth{{queue="{monitored.idle_queue}",priority="{IDLE_PRIORITY}"}}'
    _settles(prometheus, idle, sum(c.chunks for c in queued), "the waiting job's messages")
    _settles(prometheus, f'sum(sluice_queue_depth{{queue="{monitored.settings.queue}.minilm"}})', 0, "an empty queue")
    open_chunks = f'sluice_open_chunks{{status="queued",queue="{monitored.idle_queue}"}}'
    _settles(prometheus, open_chunks, sum(c.chunks for c in queued), "open chunks")
    # One GET /jobs/<id> (200) and no other status: polled too, as a slow scrape leaves a gap.
    _settles(prometheus, 'count(sluice_http_requests_total{route="/jobs/{job_id}",method="GET"})', 1, "one route")
    _settles(prometheus, 'sluice_http_requests_total{route="/jobs/{job_id}",method="GET",status="200"}', 1, "a GET")


def test_every_documented_metric_is_served_after_a_job(monitored: Monitored) -> None:
    texts = {source: _get(url) for source, url in monitored.urls.items()}
    texts["scheduler"] = _scheduler_text()
    assert mismatches(documented_metrics(), texts) == []
    assert monitored.job not in "".join(texts.values())  # no job id in any label


def _scheduler_text() -> str:
    from prometheus_client import generate_latest

    metrics = SchedulerMetrics()
    metrics.tick("started")
    return generate_latest(metrics.registry).decode()


def _sluice(mon: Monitored, *args: str) -> str:
    env = {**os.environ, **mon.env}
    done = subprocess.run([sys.executable, "-m", "sluice.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_top_once_shows_the_worker_and_the_job(monitored: Monitored) -> None:
    frame = _sluice(monitored, "top", "--once")
    assert monitored.node in frame and "minilm" in frame
    assert monitored.job in frame and monitored.idle_job in frame
    assert monitored.idle_queue in frame and f"p{IDLE_PRIORITY}:3" in frame


def test_workers_lists_the_metrics_endpoint(monitored: Monitored) -> None:
    out = _sluice(monitored, "workers")
    assert f"metrics: http://{urlsplit(monitored.urls['worker']).netloc}/metrics" in out


def test_json_logs_carry_context_and_no_secret_appears_anywhere(monitored: Monitored) -> None:
    outputs = {f"sluice {cmd}": _sluice(monitored, *cmd.split()) for cmd in ("workers --all", "top --once")}
    outputs["sluice status"] = _sluice(monitored, "status", monitored.job)
    outputs.update({f"{source} /metrics": _get(url) for source, url in monitored.urls.items()})
    logs = {name: path.read_text(errors="replace") for name, path in monitored.logs.items()}
    for name, text in {**logs, **outputs}.items():
        for secret in monitored.secrets:
            assert secret not in text, f"a secret appears in {name}"
    lines = [json.loads(line) for line in logs["worker"].splitlines() if line.startswith("{")]
    assert lines and all({"timestamp", "level", "logger", "message", "worker"} <= set(line) for line in lines)
    assert any(line.get("job") == monitored.job and "chunk" in line for line in lines)
    if REDIS_PW in monitored.secrets:  # the exporter names its broker, password masked
        assert "default:***@" in logs["exporter"]
