"""Per-process worker state: resident models (:mod:`worker.residency`) and the chunk-processing loop.

Models load once per process and stay resident. Loading happens in the process that runs the
tasks (the solo pool never forks), so CUDA is only ever initialised where it is used.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sluice.dispatch import Dispatcher
from sluice.errors import ConfigError, InfrastructureError
from sluice.families.base import ItemResult
from sluice.ledger import Claim, Ledger, Split
from sluice.logs import log_context
from sluice.registry import load_registry
from sluice.remote_code import ModelCodeError
from sluice.settings import Settings
from worker.engine import BatchStats, Engine, shared_budget
from worker.hooks import Hooks
from worker.outage import Outage
from worker.residency import ModelPool
from worker.timelimit import ChunkTimedOut, ChunkTimeLimitError, time_limit
from worker.writer import ResultWriter, cap_artifacts

log = logging.getLogger("sluice.worker")

#: Chunks this process closed, remembered so that their own messages (queued behind the run that
#: coalesced them) are acked without a database read. With 1000 single-document jobs on
#: PostgreSQL, such a message took about 2.7 ms of the worker's time with the read and 1.1-1.5 ms
#: without. Oldest forgotten first: a forgotten one costs only that read.
REMEMBER_CLOSED = 65_536


def configure_threads(settings: Settings) -> None:
    """Set thread counts deliberately: fork + tokenizers threads can hang, oversubscription is slow.

    OpenMP threads sleep at barriers instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, read when
    torch loads its OpenMP runtime, hence before the import): a spinning thread takes the core the
    result writer, Celery and, on a shared host, producers need. On 2 cores, 1000 single-document
    jobs submitted alongside ran 9-17% faster in 4 paired runs; a 1000-document job was unchanged
    within noise (-10% to +10%, mean 0).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


@dataclass
class ChunkReport:
    written: int = 0
    failed: int = 0
    skipped: bool = False
    stats: BatchStats | None = None


class WorkerRuntime:
    """Everything a worker process holds between tasks."""

    def __init__(
        self,
        settings: Settings,
        device: str | None = None,
        hostname: str | None = None,
        hooks: Hooks | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.device = device or settings.device
        self.hostname = hostname or f"{socket.gethostname()}:{os.getpid()}"
        self.ledger = dispatcher.ledger if dispatcher else Ledger.for_settings(settings)
        self.hooks = hooks or Hooks(settings)
        self.ledger.on_dead_letter = self.hooks.chunk_dead_lettered
        self.pool = ModelPool(
            load_registry(settings.models_file),
            self.device,
            budget=settings.max_model_memory,
            settings=settings,
            hooks=self.hooks,
        )
        self.dispatcher = dispatcher or Dispatcher(settings, self.ledger)
        self.outage = Outage("the database")
        self._closed: dict[tuple[str, int], None] = {}  # insertion-ordered set
        self._holding: list[str] = []  # leases of the run in progress, renewed by the heartbeat
        self._released = False  # the failed run's chunks were handed back: the database answered

    def preload(self, names: list[str]) -> None:
        """Load and pin the models this worker announces: they are never evicted."""
        self.pool.preload(names)

    def process_chunk(self, job_id: str, idx: int) -> ChunkReport:
        """Run one chunk message; raises when the run failed (the message then goes back).

        While the database is unreachable each failure waits a growing back-off first, so an
        outage is a slow retry, not a hot loop.
        """
        # A chunk marked done stays done (nothing sets it back), so its message needs no work.
        if (job_id, idx) in self._closed:
            del self._closed[job_id, idx]
            return ChunkReport(skipped=True)
        self._released = False
        try:
            report = self._process(job_id, idx)
        except InfrastructureError as exc:
            if self._released:  # the release got through: the database is back, no need to wait again
                self.outage.succeeded()
            else:
                self.outage.failed(exc)
            raise
        self.outage.succeeded()
        return report

    def _process(self, job_id: str, idx: int) -> ChunkReport:
        claim = self.ledger.claim(job_id, idx, worker=self.hostname)
        if claim is None:
            return ChunkReport(skipped=True)
        if isinstance(claim, Split):
            self._send_split(claim, idx)
            return ChunkReport(skipped=True)
        claims = [claim, *self._coalesce(claim)]
        self.hooks.chunk_claimed(claims)
        self._holding = sorted({c.lease for c in claims})
        try:
            with time_limit(self.settings.chunk_time_limit), log_context(model=claims[0].model):
                report = self._run(claims)
        except (Exception, ChunkTimeLimitError) as exc:
            self._holding = []
            timed_out = isinstance(exc, ChunkTimeLimitError)
            self._release(claims, lost=timed_out)
            self.hooks.chunk_failed(claims, exc)
            if timed_out:
                raise ChunkTimedOut(str(exc)) from exc
            raise
        self._holding = []
        self._remember(self.ledger.close_all(claims))
        self.hooks.chunk_closed(claims, report.stats or BatchStats())
        return report

    def renew_leases(self) -> None:
        """Refresh the leases of the run in progress (the heartbeat thread calls this): a chunk is
        re-sent after ``lease_seconds`` only when its holder stops working on it."""
        if leases := list(self._holding):
            self.ledger.renew_leases(leases)

    def _send_split(self, split: Split, idx: int) -> None:
        log.warning(
            "chunk %s/%s: an earlier run was lost (worker died or ran out of time); split into chunks %s that run "
            "alone, to isolate the item that causes it", split.job_id, idx, split.children,
        )  # fmt: skip
        try:
            self.dispatcher.enqueue(split.job_id, split.children, split.priority, split.model)
        except InfrastructureError as exc:  # stored unsent: the periodic reconcile sends them
            log.warning("could not send the parts of chunk %s/%s now (%s); reconcile will", split.job_id, idx, exc)

    def _remember(self, closed: list[tuple[str, int]]) -> None:
        self._closed.update(dict.fromkeys(closed))
        for key in list(islice(self._closed, max(0, len(self._closed) - REMEMBER_CLOSED))):
            del self._closed[key]

    def _release(self, claims: list[Claim], lost: bool) -> None:
        """After a failed run: hand the chunks back so their redelivery claims them at once.

        While the database is unreachable, retry with back-off for up to ``lease_seconds`` (the
        worker can do nothing else meanwhile); after that the leases, no longer renewed, have
        expired and the periodic reconcile re-sends the chunks.
        """
        deadline = time.monotonic() + self.settings.lease_seconds
        pending = list(claims)
        while pending:
            try:
                self.ledger.release(pending[0].job_id, pending[0].idx, pending[0].lease, lost=lost)
                pending.pop(0)
            except InfrastructureError as exc:
                if time.monotonic() > deadline:
                    log.warning("gave up releasing %d chunk(s) (%s); their leases expire instead", len(pending), exc)
                    return
                self.outage.failed(exc)
        self._released = True

    def _coalesce(self, claim: Claim) -> list[Claim]:
        """Cross-job coalescing: when this chunk is smaller than a chunk can be, take queued chunks
        of other jobs for the same model straight from the database, up to ``chunk_size`` items in
        all, so that small jobs get the sorting window and full batches a bulk chunk gets.

        Their Redis messages stay queued; when they arrive, the chunks are found done (in this
        process's memory of what it closed, else in the database) or leased, and acked without
        work. If this worker dies first, those messages (or the reconciler, once the lease
        expires) bring the chunks back: nothing is acked before it is committed.
        """
        room = self.settings.chunk_size - len(claim.items)
        if not self.settings.coalesce_chunks or room <= 0:
            return []
        return self.ledger.claim_queued(
            claim.model, (claim.job_id, claim.idx), self.settings.coalesce_chunks, room, worker=self.hostname
        )

    def _refuse(self, claims: list[Claim], model: str, error: str) -> ChunkReport:
        """Fail every claimed item with ``error`` (through the writer, so counters and hooks follow)."""
        log.error("%s; failing the %d item(s) of this run", error, sum(len(c.items) for c in claims))
        by_job: dict[str, list[ItemResult]] = {}
        for c in claims:
            by_job.setdefault(c.job_id, []).extend(ItemResult(item=i, error=error) for i, _ in c.items)
        writer = ResultWriter(self.ledger, self.hostname, claims[0].job_id, self.hooks, model)
        with writer:
            writer.put(by_job)
        return ChunkReport(written=writer.written, failed=writer.failed)

    def _run(self, claims: list[Claim]) -> ChunkReport:
        """Run the claimed items; returns only once every result is committed (raises if one is not).

        Batch k's results are written on the writer thread while batch k+1's forward runs; the
        writer also checks for cancellation after each write, so a cancel stops work one batch later.
        """
        totals = BatchStats()
        report = ChunkReport(stats=totals)
        model = claims[0].model
        try:
            family = self.pool.get(model)
        except ModelCodeError as exc:
            # The model's own code may not run (changed since it was pinned, or its register_module
            # is missing): no retry can fix that, so its items fail with the reason instead.
            return self._refuse(claims, model, str(exc))
        except (OSError, ValueError, KeyError, ImportError, ConfigError) as exc:
            # Weights that are not where the registry says, or a config transformers cannot read:
            # a retry fails the same way, at full speed, forever (a requeued run counts no attempt).
            return self._refuse(claims, model, f"model {model!r} could not be loaded: {type(exc).__name__}: {exc}")
        s = self.settings
        tokens = s.batch_tokens(self.device)
        budget = shared_budget(family, tokens, s.oom_min_batch_tokens, s.oom_recover_batches)
        engine = Engine(family, tokens, s.max_batch_size, budget=budget)
        # The engine numbers items 0..n-1 across all claimed chunks; keys maps them back to
        # (job, item). Job-level params are defaults that an item's own fields override.
        keys: list[tuple[str, int]] = []
        items: list[tuple[int, dict[str, Any]]] = []
        for c in claims:
            for item, fields in c.items:
                items.append((len(keys), {**c.params, **fields}))
                keys.append((c.job_id, item))
        writer = ResultWriter(self.ledger, self.hostname, claims[0].job_id, self.hooks, model)
        planned = budget.current
        with writer, closing(engine.run(items)) as run:
            for results, stats in run:
                by_job: dict[str, list[ItemResult]] = {}
                for r in results:
                    job_id, r.item = keys[r.item]
                    by_job.setdefault(job_id, []).append(cap_artifacts(r, s.max_artifact_bytes))
                totals.add(stats)
                self.hooks.batch_finished(model, stats, len(results))  # before its results are queued
                writer.put(by_job)
                if budget.current != planned:  # backed off after out-of-memory, or grown back
                    planned = budget.current
                    self.hooks.budget_changed(model, planned, "oom" if stats.splits else "recovered")
                if writer.cancelled:
                    break
        report.written, report.failed = writer.written, writer.failed
        self.pool.record(model, totals)
        return report
