"""Per-process worker state: resident models (:mod:`worker.residency`) and the chunk-processing loop.

Models load once per process and stay resident. Loading happens in the process that runs the
tasks (the solo pool never forks), so CUDA is only ever initialised where it is used.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sluice.families.base import ItemResult
from sluice.ledger import Claim, Ledger
from sluice.registry import load_registry
from sluice.settings import Settings
from worker.engine import BatchStats, Engine, shared_budget
from worker.hooks import Hooks
from worker.residency import ModelPool
from worker.writer import ResultWriter

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
        self, settings: Settings, device: str | None = None, hostname: str | None = None, hooks: Hooks | None = None
    ) -> None:
        self.settings = settings
        self.device = device or settings.device
        self.hostname = hostname or f"{socket.gethostname()}:{os.getpid()}"
        self.ledger = Ledger.for_settings(settings)
        self.hooks = hooks or Hooks(settings)
        self.pool = ModelPool(
            load_registry(settings.models_file), self.device, budget=settings.max_model_memory, settings=settings
        )
        self._closed: dict[tuple[str, int], None] = {}  # insertion-ordered set

    def preload(self, names: list[str]) -> None:
        """Load and pin the models this worker announces: they are never evicted."""
        self.pool.preload(names)

    def process_chunk(self, job_id: str, idx: int) -> ChunkReport:
        # A chunk marked done stays done (nothing sets it back), so its message needs no work.
        if (job_id, idx) in self._closed:
            del self._closed[job_id, idx]
            return ChunkReport(skipped=True)
        claim = self.ledger.claim(job_id, idx, worker=self.hostname)
        if claim is None:
            return ChunkReport(skipped=True)
        claims = [claim, *self._coalesce(claim)]
        self.hooks.chunk_claimed(claims)
        try:
            report = self._run(claims)
        except Exception as exc:
            self._release(claims)
            self.hooks.chunk_failed(claims, exc)
            raise
        self._remember(self.ledger.close_all(claims))
        self.hooks.chunk_closed(claims, report.stats or BatchStats())
        return report

    def _remember(self, closed: list[tuple[str, int]]) -> None:
        self._closed.update(dict.fromkeys(closed))
        for key in list(islice(self._closed, max(0, len(self._closed) - REMEMBER_CLOSED))):
            del self._closed[key]

    def _release(self, claims: list[Claim]) -> None:
        """After a failed run (a commit failed): hand the chunks back for redelivery, best effort;
        if the database is down too, their leases expire and ``sluice reconcile`` resends them."""
        for c in claims:
            try:
                self.ledger.release(c.job_id, c.idx, c.lease)
            except Exception as exc:
                log.warning("could not release chunk %s/%s: %s", c.job_id, c.idx, exc)

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

    def _run(self, claims: list[Claim]) -> ChunkReport:
        """Run the claimed items; returns only once every result is committed (raises if one is not).

        Batch k's results are written on the writer thread while batch k+1's forward runs; the
        writer also checks for cancellation after each write, so a cancel stops work one batch later.
        """
        totals = BatchStats()
        report = ChunkReport(stats=totals)
        model = claims[0].model
        family = self.pool.get(model)
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
        with writer, closing(engine.run(items)) as run:
            for results, stats in run:
                by_job: dict[str, list[ItemResult]] = {}
                for r in results:
                    job_id, r.item = keys[r.item]
                    by_job.setdefault(job_id, []).append(r)
                writer.put(by_job)
                totals.add(stats)
                self.hooks.batch_finished(model, stats, len(results))
                if writer.cancelled:
                    break
        report.written, report.failed = writer.written, writer.failed
        self.pool.record(model, totals)
        return report
