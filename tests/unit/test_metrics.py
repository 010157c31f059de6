"""Metrics without services: the worker's hook metrics, the exporter's gauges over fakes, the API
middleware's labels, fleet ports, and the README table / Grafana dashboard agreeing with the code."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from sluice.api.metrics import HttpMetrics, MetricsMiddleware
from sluice.clock import utcnow
from sluice.cluster import priority_key
from sluice.exporter import ClusterCollector
from sluice.ledger import ChunkGroup, Claim, ClusterStats
from sluice.metrics import SchedulerMetrics, new_registry
from sluice.settings import Settings
from tests.monitoring import documented_metrics, mismatches
from worker.engine import BatchStats
from worker.hooks import HookChain
from worker.metrics import PrometheusHooks, enable_metrics
from worker.supervisor import plan_fleet

ROOT = Path(__file__).resolve().parents[2]


def _claim(idx: int, deliveries: int = 1) -> Claim:
    submitted = utcnow() - timedelta(seconds=5)
    return Claim(
        "job-1", idx, "lease", "minilm", {}, [(0, {"text": "x"})], submitted_at=submitted, deliveries=deliveries
    )


def _worked_hooks() -> PrometheusHooks:
    """A PrometheusHooks that went through one of every event."""
    hooks = PrometheusHooks(Settings(max_batch_tokens=2048))
    hooks.worker_started("cpu0@h", "cpu", ["sluice.minilm", "sluice"])
    hooks.model_loaded("minilm", {"bytes": 90_000_000, "device": "cpu", "task": "feature-extraction"})
    hooks.chunk_claimed([_claim(0), _claim(1, deliveries=2)])
    hooks.batch_finished("minilm", BatchStats(features=4, real_tokens=30, padded_tokens=40, forward_s=0.1, splits=1), 4)
    hooks.batch_finished("minilm", BatchStats(), 2)  # items that failed before a forward pass
    hooks.budget_changed("minilm", 512, "oom")
    hooks.results_committed("minilm", {"job-1": (3, 1), "job-2": (2, 0)})
    hooks.commit_timed("minilm", 0.01, 6)
    hooks.chunk_closed([_claim(0)], BatchStats())
    hooks.chunk_failed([_claim(1)], RuntimeError("x"))
    hooks.chunk_dead_lettered("minilm", "job-3", 0, 5)
    hooks.message_dropped("sluice", "envelope-not-json")
    hooks.message_dropped("sluice", "something new")
    return hooks


def test_worker_hooks_count_what_the_worker_did() -> None:
    hooks = _worked_hooks()
    value = hooks.registry.get_sample_value
    assert value("sluice_items_processed_total", {"model": "minilm", "outcome": "done"}) == 5
    assert value("sluice_items_processed_total", {"model": "minilm", "outcome": "failed"}) == 1 + 5
    assert value("sluice_chunks_claimed_total", {"model": "minilm"}) == 2
    assert value("sluice_chunks_redelivered_total", {"model": "minilm"}) == 1
    assert value("sluice_chunks_closed_total", {"model": "minilm"}) == 1
    assert value("sluice_chunks_failed_total", {"model": "minilm"}) == 1
    assert value("sluice_chunks_dead_lettered_total", {"model": "minilm"}) == 1
    assert value("sluice_batch_size_count", {"model": "minilm"}) == 1  # the empty batch is not a forward pass
    assert value("sluice_batch_padded_tokens_sum", {"model": "minilm"}) == 40
    assert value("sluice_padding_efficiency", {"model": "minilm"}) == 0.75
    assert value("sluice_oom_backoffs_total", {"model": "minilm"}) == 1
    assert value("sluice_batch_token_budget", {"model": "minilm"}) == 512
    assert value("sluice_submit_to_claim_seconds_count", {"model": "minilm"}) == 2
    assert value("sluice_submit_to_claim_seconds_sum", {"model": "minilm"}) >= 10
    assert value("sluice_claim_to_commit_seconds_count", {"model": "minilm"}) == 1
    assert value("sluice_db_write_seconds_count", {"model": "minilm"}) == 1
    assert value("sluice_model_resident_bytes", {"model": "minilm"}) == 90_000_000
    assert value("sluice_messages_dropped_total", {"reason": "other"}) == 1
    assert value("sluice_worker_busy") == 0
    hooks.model_evicted("minilm", {"bytes": 90_000_000, "for": "other"})
    assert value("sluice_model_resident_bytes", {"model": "minilm"}) is None
    assert value("sluice_model_evictions_total", {"model": "minilm"}) == 1


def test_a_loaded_models_series_start_at_zero_and_budget_at_the_configured_tokens() -> None:
    hooks = PrometheusHooks(Settings())
    hooks.model_loaded("minilm", {"bytes": 1, "device": "cuda:0"})
    value = hooks.registry.get_sample_value
    assert value("sluice_batch_token_budget", {"model": "minilm"}) == 16384
    assert value("sluice_oom_backoffs_total", {"model": "minilm"}) == 0
    assert value("sluice_items_processed_total", {"model": "minilm", "outcome": "failed"}) == 0


class _FakeLedger:
    def cluster_stats(self) -> ClusterStats:
        groups = [ChunkGroup("q.minilm", "minilm", "queued", 7, 3, 150), ChunkGroup(None, "minilm", "queued", 0, 1, 5)]
        return ClusterStats({"queued": 2, "running": 0}, {"done": 10, "failed": 1, "pending": 155}, groups,
                            utcnow() - timedelta(seconds=30))  # fmt: skip

    def load_workers(self, include_stale: bool = False) -> list[Any]:
        return []


class _FakePipeline:
    def __init__(self, lists: dict[str, int]) -> None:
        self.lists, self.asked = lists, []

    def llen(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[int]:
        return [self.lists.get(k, 0) for k in self.asked]


class _FakeRedis:
    """Lists by key; an empty dead-letter list; 4 unacked messages."""

    def __init__(self, lists: dict[str, int]) -> None:
        self.lists = lists

    def pipeline(self, transaction: bool = True) -> _FakePipeline:
        return _FakePipeline(self.lists)

    def llen(self, key: str) -> int:
        return self.lists.get(key, 0)

    def hlen(self, key: str) -> int:
        return 4


def _exporter_text(client: Any) -> str:
    registry = new_registry()
    registry.register(ClusterCollector(Settings(queue="q"), _FakeLedger(), client))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_exporter_reads_priority_lists_and_reports_a_source_down() -> None:
    text = _exporter_text(_FakeRedis({"q": 1, "q:2": 3, "q.minilm": 2}))
    assert 'sluice_queue_depth{priority="7",queue="q"} 3.0' in text  # Sluice 7 = Redis step 2
    assert 'sluice_queue_depth{priority="9",queue="q"} 1.0' in text  # Sluice 9 = step 0: the bare list
    assert 'sluice_queue_depth{priority="9",queue="q.minilm"} 2.0' in text  # a queue known from the chunks only
    assert 'sluice_open_chunks{model="minilm",queue="unsent",status="queued"} 1.0' in text
    assert 'sluice_items{status="pending"} 155.0' in text and "sluice_broker_unacked_messages 4.0" in text
    assert 'sluice_source_up{source="broker"} 1.0' in text
    age = re.search(r"^sluice_oldest_queued_chunk_age_seconds (\S+)$", text, re.M)
    assert age is not None and 29 <= float(age[1]) < 60
    down = _exporter_text(object())
    assert 'sluice_source_up{source="broker"} 0.0' in down and "sluice_queue_depth" not in down
    assert 'sluice_jobs{status="queued"} 2.0' in down


def test_priority_keys_follow_kombu() -> None:
    assert [priority_key("sluice", p) for p in (9, 8, 0)] == ["sluice", "sluice:1", "sluice:9"]


def test_http_metrics_label_route_templates_never_raw_paths() -> None:
    metrics = HttpMetrics()
    app = FastAPI()

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, str]:
        return {"id": job_id}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    client = TestClient(app)
    assert client.get("/jobs/0b7c-secret-id").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    client.request("FROB", "/jobs/x")
    text = generate_latest(metrics.registry).decode()
    assert 'sluice_http_requests_total{method="GET",route="/jobs/{job_id}",status="200"} 1.0' in text
    assert 'sluice_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'method="OTHER"' in text and "secret-id" not in text and "/no/such" not in text


def test_every_documented_metric_is_defined_with_its_type_and_labels() -> None:
    http = HttpMetrics()
    http.observe("/jobs", "GET", 200, 0.01)
    texts = {"worker": generate_latest(_worked_hooks().registry).decode(), "exporter": _exporter_text(_FakeRedis({})),
             "api": generate_latest(http.registry).decode(),
             "scheduler": generate_latest(SchedulerMetrics().registry).decode()}  # fmt: skip
    docs = documented_metrics()
    assert len(docs) >= 30
    assert mismatches(docs, texts) == []


def test_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "sluice.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"\bsluice_\w+", e)}
    documented = set(documented_metrics())
    assert used <= documented, used - documented
    assert len(used) >= 20


def test_scheduler_ticks_refuse_unbounded_outcomes() -> None:
    metrics = SchedulerMetrics()
    metrics.tick("started")
    assert metrics.registry.get_sample_value("sluice_schedule_ticks_total", {"outcome": "started"}) == 1
    with pytest.raises(ValueError, match="outcome"):
        metrics.tick("job-123")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_port_enables_the_hook_once_and_serves_it() -> None:
    port = _free_port()
    settings = Settings(metrics_port=port)
    chain = HookChain(settings, [])
    address = enable_metrics(chain, settings)
    assert address == f"127.0.0.1:{port}" and enable_metrics(chain, settings) == address
    assert len(chain.hooks) == 1
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        assert b"sluice_worker_busy" in answer.read()
    chain.hooks[0].server.shutdown()  # type: ignore[attr-defined]
    assert enable_metrics(HookChain(Settings(), []), Settings()) is None


def test_fleet_children_get_consecutive_metrics_ports() -> None:
    specs = plan_fleet(["0", "1"], [], "h", device="cpu", settings=Settings(metrics_port=9500), detected=lambda: [])
    assert [s.env["SLUICE_METRICS_PORT"] for s in specs] == ["9500", "9501"]
    cpu = plan_fleet("none", [], "h", workers=2, settings=Settings(), cores=2)
    assert all("SLUICE_METRICS_PORT" not in s.env for s in cpu)
