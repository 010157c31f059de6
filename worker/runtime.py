"""Per-process worker state: resident models and the chunk-processing loop.

Models load once per process and stay resident. Loading happens in the process that runs the
tasks (the solo pool never forks), so CUDA is only ever initialised where it is used.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from sluice.registry import Registry, load_registry
from sluice.settings import Settings
from worker.engine import BatchStats, Engine
from worker.families import family_for
from worker.families.base import TaskFamily
from worker.store import Claim, Store

log = logging.getLogger("sluice.worker")


def configure_threads(settings: Settings) -> None:
    """Set thread counts deliberately: fork + tokenizers threads can hang, oversubscription is slow."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


class ModelPool:
    """Loaded task families by registered model name."""

    def __init__(self, registry: Registry, device: str) -> None:
        self.registry = registry
        self.device = device
        self.loaded: dict[str, TaskFamily] = {}

    def get(self, name: str) -> TaskFamily:
        family = self.loaded.get(name)
        if family is None:
            spec = self.registry.get(name)
            started = time.perf_counter()
            family = family_for(spec.task)(spec, self.device)
            family.setup()
            self.loaded[name] = family
            log.info("loaded model %s (%s) on %s in %.1fs", name, spec.task, self.device,
                     time.perf_counter() - started)  # fmt: skip
        return family


@dataclass
class ChunkReport:
    written: int = 0
    failed: int = 0
    skipped: bool = False
    stats: BatchStats | None = None


class WorkerRuntime:
    """Everything a worker process holds between tasks."""

    def __init__(self, settings: Settings, device: str | None = None, hostname: str | None = None) -> None:
        self.settings = settings
        self.device = device or settings.device
        self.hostname = hostname or f"{socket.gethostname()}:{os.getpid()}"
        self.store = Store(settings.resolved_database_url, settings.max_attempts)
        self.pool = ModelPool(load_registry(settings.models_file), self.device)

    def preload(self, names: list[str]) -> None:
        for name in names:
            self.pool.get(name)

    def process_chunk(self, job_id: str, idx: int) -> ChunkReport:
        claim = self.store.claim(job_id, idx)
        if claim is None:
            return ChunkReport(skipped=True)
        report = self._run(claim)
        self.store.close(job_id, idx, claim.lease)
        return report

    def _run(self, claim: Claim) -> ChunkReport:
        report = ChunkReport(stats=BatchStats())
        family = self.pool.get(claim.model)
        engine = Engine(family, self.settings.max_batch_tokens, self.settings.max_batch_size)
        # Job-level params are defaults that an item's own fields override.
        items = [(i, {**claim.params, **fields}) for i, fields in claim.items]
        for results, stats in engine.run(items):
            done, failed = self.store.write_results(claim.job_id, results, self.hostname)
            report.written += done
            report.failed += failed
            report.stats.add(stats)  # type: ignore[union-attr]
            if self.store.is_cancelled(claim.job_id):
                break
        return report
