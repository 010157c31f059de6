"""A worker's Prometheus metrics, attached as a hook (:class:`PrometheusHooks`).

``run_worker`` adds it to the hook chain when ``SLUICE_METRICS_PORT`` is set, and it serves
``http://SLUICE_METRICS_HOST:SLUICE_METRICS_PORT/metrics`` from a daemon thread. Everything it
knows comes from the worker's hook events (:mod:`worker.hooks`); labels are the model, an outcome
or a reason code, never a job id. Cluster-wide figures (jobs, queue depths) come from the
exporter, ``sluice metrics``, not from here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from sluice.clock import as_utc, utcnow
from sluice.metrics import SECONDS_BUCKETS, advertised, new_registry, serve
from sluice.settings import Settings
from worker import messages
from worker.hooks import HookChain, Hooks

if TYPE_CHECKING:
    from sluice.ledger import Claim
    from worker.engine import BatchStats

#: Reason codes of dropped messages (:mod:`worker.messages`); anything else counts as ``other``.
DROP_REASONS = (
    messages.ENVELOPE_NOT_JSON, messages.ENVELOPE_MALFORMED, messages.CONTENT_REFUSED, messages.BODY_UNDECODABLE,
    messages.NOT_A_CHUNK_TASK, messages.BODY_MALFORMED, messages.BAD_ARGUMENTS, messages.BAD_JOB_ID,
    messages.BAD_CHUNK_INDEX, messages.REFUSED_BY_CELERY, "other",
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)


class PrometheusHooks(Hooks):
    """Counts what a worker does; serves it when ``settings.metrics_port`` is set."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.registry = new_registry()
        self._define()
        self._claimed: dict[tuple[str, int], float] = {}  # chunk -> monotonic time of its claim
        self._tokens: dict[str, list[int]] = {}  # model -> [real, padded] since start
        self._lock = threading.Lock()
        self.address: str | None = None
        if settings.metrics_port:
            self.server = serve(self.registry, settings.metrics_port, settings.metrics_host)
            self.address = advertised(settings.metrics_host, settings.metrics_port)

    def _define(self) -> None:
        r, m = self.registry, ["model"]
        self.worker_info = Gauge("sluice_worker_info", "1, labelled with this worker's name and device.",
                                 ["worker", "device"], registry=r)  # fmt: skip
        self.busy = Gauge("sluice_worker_busy", "1 while the worker runs a chunk, else 0.", registry=r)
        self.items = Counter("sluice_items_processed", "Item results written, by model and outcome (done, failed).",
                             ["model", "outcome"], registry=r)  # fmt: skip
        self.batch_size = Histogram("sluice_batch_size", "Inputs per forward pass.", m, buckets=SIZE_BUCKETS,
                                    registry=r)  # fmt: skip
        self.batch_padded = Histogram("sluice_batch_padded_tokens", "Padded tokens per forward pass.", m,
                                      buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.tokens = Counter("sluice_tokens", "Tokens through forward passes: real or padded.", ["model", "kind"],
                              registry=r)  # fmt: skip
        self.efficiency = Gauge("sluice_padding_efficiency", "Real / padded tokens since the worker started.", m,
                                registry=r)  # fmt: skip
        self.forward = Histogram("sluice_forward_seconds", "Seconds of one forward pass.", m, buckets=SECONDS_BUCKETS,
                                 registry=r)  # fmt: skip
        self.waited = Histogram("sluice_submit_to_claim_seconds", "Seconds from a job's submission to a claim of "
                                "one of its chunks.", m, buckets=WAIT_BUCKETS, registry=r)  # fmt: skip
        self.held = Histogram("sluice_claim_to_commit_seconds", "Seconds from a chunk's claim to its last commit.",
                              m, buckets=WAIT_BUCKETS, registry=r)  # fmt: skip
        self.claimed = Counter("sluice_chunks_claimed", "Chunks claimed (own and coalesced).", m, registry=r)
        self.redelivered = Counter("sluice_chunks_redelivered", "Chunks claimed again after an earlier delivery.",
                                   m, registry=r)  # fmt: skip
        self.closed = Counter("sluice_chunks_closed", "Chunks finished and closed.", m, registry=r)
        self.failed = Counter("sluice_chunks_failed", "Chunk runs that failed (the chunk goes back).", m, registry=r)
        self.dead = Counter("sluice_chunks_dead_lettered", "Chunks whose items failed after too many lost runs.",
                            m, registry=r)  # fmt: skip
        self._define_models()

    def _define_models(self) -> None:
        r, m = self.registry, ["model"]
        self.oom = Counter("sluice_oom_backoffs", "Out-of-memory errors that split a batch.", m, registry=r)
        self.budget = Gauge("sluice_batch_token_budget", "Padded tokens per forward pass the model plans with now.",
                            m, registry=r)  # fmt: skip
        self.resident = Gauge("sluice_model_resident_bytes", "Bytes of parameters and buffers of a loaded model.",
                              m, registry=r)  # fmt: skip
        self.loads = Counter("sluice_model_loads", "Model loads.", m, registry=r)
        self.evictions = Counter("sluice_model_evictions", "Models evicted (least recently used).", m, registry=r)
        self.db_write = Histogram("sluice_db_write_seconds", "Seconds of one result transaction.", m,
                                  buckets=SECONDS_BUCKETS, registry=r)  # fmt: skip
        self.dropped = Counter("sluice_messages_dropped", "Malformed messages dropped, by reason code.", ["reason"],
                               registry=r)  # fmt: skip
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)

    def _zero(self, model: str) -> None:
        """Create a model's series at 0, so rates and alerts work before the first event."""
        for metric in (self.batch_size, self.batch_padded, self.forward, self.waited, self.held, self.claimed,
                       self.redelivered, self.closed, self.failed, self.dead, self.oom, self.loads, self.evictions,
                       self.db_write):  # fmt: skip
            metric.labels(model=model)
        for outcome in ("done", "failed"):
            self.items.labels(model=model, outcome=outcome)
        for kind in ("real", "padded"):
            self.tokens.labels(model=model, kind=kind)

    def worker_started(self, hostname: str, device: str, queues: list[str]) -> None:
        self.worker_info.labels(worker=hostname, device=device).set(1)

    def chunk_claimed(self, claims: list[Claim]) -> None:
        now, wall = time.monotonic(), utcnow()
        self.busy.set(1)
        for c in claims:
            self.claimed.labels(model=c.model).inc()
            if c.deliveries > 1:
                self.redelivered.labels(model=c.model).inc()
            if c.submitted_at is not None:
                self.waited.labels(model=c.model).observe(max(0.0, (wall - as_utc(c.submitted_at)).total_seconds()))
            with self._lock:
                self._claimed[c.job_id, c.idx] = now

    def chunk_closed(self, claims: list[Claim], stats: BatchStats) -> None:
        self._ended(claims, self.closed)

    def chunk_failed(self, claims: list[Claim], error: BaseException) -> None:
        self._ended(claims, self.failed)

    def _ended(self, claims: list[Claim], counter: Counter) -> None:
        now = time.monotonic()
        self.busy.set(0)
        for c in claims:
            counter.labels(model=c.model).inc()
            with self._lock:
                since = self._claimed.pop((c.job_id, c.idx), None)
            if since is not None and counter is self.closed:
                self.held.labels(model=c.model).observe(now - since)

    def batch_finished(self, model: str, stats: BatchStats, n_results: int) -> None:
        if stats.splits:
            self.oom.labels(model=model).inc(stats.splits)
        if not stats.features:
            return  # items that failed before any forward pass
        self.batch_size.labels(model=model).observe(stats.features)
        self.batch_padded.labels(model=model).observe(stats.padded_tokens)
        self.forward.labels(model=model).observe(stats.forward_s)
        self.tokens.labels(model=model, kind="real").inc(stats.real_tokens)
        self.tokens.labels(model=model, kind="padded").inc(stats.padded_tokens)
        with self._lock:
            totals = self._tokens.setdefault(model, [0, 0])
            totals[0] += stats.real_tokens
            totals[1] += stats.padded_tokens
            ratio = totals[0] / totals[1] if totals[1] else 1.0
        self.efficiency.labels(model=model).set(ratio)

    def results_committed(self, model: str, by_job: dict[str, tuple[int, int]]) -> None:
        done = sum(d for d, _ in by_job.values())
        failed = sum(f for _, f in by_job.values())
        self.items.labels(model=model, outcome="done").inc(done)
        self.items.labels(model=model, outcome="failed").inc(failed)

    def commit_timed(self, model: str, seconds: float, rows: int) -> None:
        self.db_write.labels(model=model).observe(seconds)

    def chunk_dead_lettered(self, model: str, job_id: str, idx: int, n_items: int) -> None:
        self.dead.labels(model=model).inc()
        self.items.labels(model=model, outcome="failed").inc(n_items)

    def budget_changed(self, model: str, tokens: int, reason: str) -> None:
        self.budget.labels(model=model).set(tokens)

    def model_loaded(self, model: str, info: dict[str, Any]) -> None:
        self._zero(model)
        self.loads.labels(model=model).inc()
        self.resident.labels(model=model).set(int(info.get("bytes") or 0))
        self.budget.labels(model=model).set(self.settings.batch_tokens(str(info.get("device") or "cpu")))

    def model_evicted(self, model: str, info: dict[str, Any]) -> None:
        self.evictions.labels(model=model).inc()
        with contextlib.suppress(KeyError):  # never set (loaded before this hook existed)
            self.resident.remove(model)

    def message_dropped(self, queue: str, reason: str) -> None:
        self.dropped.labels(reason=reason if reason in DROP_REASONS else "other").inc()


def enable_metrics(hooks: HookChain, settings: Settings) -> str | None:
    """With ``SLUICE_METRICS_PORT`` set, make sure the chain has a :class:`PrometheusHooks` (one
    named in ``SLUICE_HOOKS`` counts) and return the ``host:port`` it serves on; else None."""
    if not settings.metrics_port:
        return None
    found = next((h for h in hooks.hooks if isinstance(h, PrometheusHooks)), None)
    if found is None:
        found = PrometheusHooks(settings)
        hooks.hooks.append(found)
    return found.address
