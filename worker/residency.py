"""Resident models under a memory budget: pinned preloads, plus on-demand models evicted LRU.

A worker keeps every model it has loaded until holding one more would exceed its budget
(``--max-model-memory`` / ``SLUICE_MAX_MODEL_MEMORY``); then the least recently used model that
was not preloaded is released. Preloaded models are pinned: their queues promise the fleet that
this worker serves them, so they never leave. A model's size is what its parameters and buffers
occupy once loaded; before a first load it is estimated from the weight files, and checked again
right after the load, so the budget holds even when the estimate was short.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sluice import remote_code
from sluice.clock import utcnow
from sluice.families import family_for
from sluice.families.base import TaskFamily
from sluice.registry import ModelSpec, Registry
from sluice.settings import Settings
from sluice.sizes import format_size
from worker.engine import BatchStats
from worker.hooks import Hooks

log = logging.getLogger("sluice.worker")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
KEPT_EVICTIONS = 20  # most recent evictions reported in the workers row


@dataclass(frozen=True)
class Candidate:
    """What the eviction policy needs to know about a resident model."""

    name: str
    bytes: int
    last_used: float  # any increasing clock; smaller is older
    pinned: bool


def lru_victims(residents: Iterable[Candidate], incoming: int, budget: int | None) -> list[str]:
    """Models to evict, oldest first, so that ``incoming`` more bytes fit in ``budget``.

    Pinned models never leave. If even evicting every unpinned model cannot make room, all of
    them go anyway: the load happens regardless, and it then has the most memory it can get.
    """
    if budget is None:
        return []
    pool = list(residents)
    used = sum(r.bytes for r in pool)
    victims: list[str] = []
    for r in sorted((r for r in pool if not r.pinned), key=lambda r: r.last_used):
        if used + incoming <= budget:
            break
        victims.append(r.name)
        used -= r.bytes
    return victims


def family_bytes(family: TaskFamily) -> tuple[int, str | None]:
    """Bytes of the parameters and buffers of every torch module the family holds, and their dtype."""
    import torch

    seen: set[int] = set()
    total, dtype = 0, None
    for module in _modules(vars(family).values(), torch.nn.Module):
        for t in itertools.chain(module.parameters(), module.buffers()):
            if id(t) not in seen:  # tied weights count once
                seen.add(id(t))
                total += t.numel() * t.element_size()
                dtype = dtype or str(t.dtype).removeprefix("torch.")
    return total, dtype


def _modules(values: Iterable[Any], kind: type) -> Iterator[Any]:
    """The modules among ``values``, and those one container down: a family keeps some in a dict
    (a generation family's assistant models, loaded on first use, by name)."""
    for value in values:
        for item in value.values() if isinstance(value, dict) else (value,):
            for part in item if isinstance(item, tuple | list) else (item,):
                if isinstance(part, kind):
                    yield part


def weight_file_bytes(spec: ModelSpec) -> int:
    """Size of the weight files in a local model directory: the estimate before a first load."""
    path = Path(spec.path)
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def load_family(spec: ModelSpec, device: str, settings: Settings | None = None) -> TaskFamily:
    """The registered model's family, set up on ``device``, run under the worker's ``settings``.

    A model with its own code loads only while that code matches the registry's pin (checked
    before and again after ``from_pretrained``, which copies and imports it in between); its
    ``register_module`` is imported first (:mod:`sluice.remote_code`).
    """
    remote_code.prepare(spec)
    family = family_for(spec.task)(spec, device, settings)
    family.setup()
    try:
        remote_code.verify(spec)
    except remote_code.ModelCodeError:
        family.release()
        raise
    return family


@dataclass
class Resident:
    """A loaded model and its bookkeeping."""

    name: str
    task: str
    family: TaskFamily
    bytes: int
    dtype: str | None
    pinned: bool
    loaded_at: datetime
    last_used: datetime
    used_tick: float
    #: what this model's forward passes did since it was loaded (features, real/padded tokens, seconds)
    work: BatchStats = field(default_factory=BatchStats)

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.bytes, self.used_tick, self.pinned)


class ModelPool:
    """Loaded task families by registered model name, kept within ``budget`` bytes by LRU eviction.

    ``on_change`` runs after every load or eviction (the worker rewrites its ``workers`` row).
    ``settings`` are the worker's, handed to every family it loads (``Settings()`` when not given);
    ``hooks`` hear of every load and eviction.
    ``load``, ``measure`` and ``estimate`` are seams for tests that use fake families.
    """

    def __init__(
        self,
        registry: Registry,
        device: str,
        budget: int | None = None,
        on_change: Callable[[], None] | None = None,
        load: Callable[[ModelSpec, str], TaskFamily] | None = None,
        measure: Callable[[TaskFamily], tuple[int, str | None]] = family_bytes,
        estimate: Callable[[ModelSpec], int] = weight_file_bytes,
        settings: Settings | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.registry = registry
        self.hooks = hooks
        self.device = device
        self.budget = budget
        self.on_change = on_change
        self.settings = settings if settings is not None else Settings()
        self._load = load or partial(load_family, settings=self.settings)
        self._measure, self._estimate = measure, estimate
        self._residents: dict[str, Resident] = {}
        self._measured: dict[str, int] = {}  # exact sizes of models loaded before: better than estimates
        self._evictions: deque[dict[str, Any]] = deque(maxlen=KEPT_EVICTIONS)
        self._lock = threading.Lock()  # the heartbeat thread reads while the task thread loads

    @property
    def loaded(self) -> dict[str, TaskFamily]:
        with self._lock:
            return {name: r.family for name, r in self._residents.items()}

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(r.bytes for r in self._residents.values())

    def preload(self, names: Iterable[str]) -> None:
        """Load and pin: preloaded models are never evicted."""
        for name in names:
            self.get(name, pin=True)

    def get(self, name: str, pin: bool = False) -> TaskFamily:
        """The loaded family for ``name``, loading it (and evicting LRU models) when needed."""
        resident = self._residents.get(name)
        if resident is None:
            resident = self._admit(name, pin)
        resident.last_used, resident.used_tick = utcnow(), time.monotonic()
        resident.pinned = resident.pinned or pin
        return resident.family

    def _admit(self, name: str, pin: bool) -> Resident:
        spec = self.registry.get(name)
        expected = self._measured.get(name) or self._estimate(spec)
        self._evict(lru_victims(self._candidates(), expected, self.budget), for_model=name)
        started = time.perf_counter()
        family = self._load(spec, self.device)
        size, dtype = self._measure(family)
        self._measured[name] = size
        now = utcnow()
        resident = Resident(name, spec.task, family, size, dtype, pin, now, now, time.monotonic())
        with self._lock:
            self._residents[name] = resident
        log.info("loaded model %s (%s, %s, %s) on %s in %.1fs; %s resident of %s", name, spec.task, dtype,
                 format_size(size), self.device, time.perf_counter() - started, format_size(self.used_bytes),
                 format_size(self.budget) if self.budget else "no limit")  # fmt: skip
        if self.budget is not None and size > self.budget:
            log.warning("model %s alone (%s) exceeds the memory budget %s", name, format_size(size),
                        format_size(self.budget))  # fmt: skip
        if self.hooks is not None:
            self.hooks.model_loaded(name, {"task": spec.task, "bytes": size, "dtype": dtype, "device": self.device,
                                           "load_s": time.perf_counter() - started, "pinned": pin})  # fmt: skip
        # The estimate may have been short: check again now that the real size is known.
        others = [c for c in self._candidates() if c.name != name]
        self._evict(lru_victims(others, size, self.budget), for_model=name)
        self._changed()
        return resident

    def _candidates(self) -> list[Candidate]:
        with self._lock:
            return [r.candidate() for r in self._residents.values()]

    def _evict(self, names: list[str], for_model: str) -> None:
        for name in names:
            with self._lock:
                resident = self._residents.pop(name)
            resident.family.release()
            self._evictions.append({"model": name, "bytes": resident.bytes, "evicted_at": utcnow().isoformat(),
                                    "for": for_model})  # fmt: skip
            log.info("evicted model %s (%s, least recently used, last used %s) to make room for %s",
                     name, format_size(resident.bytes), resident.last_used.isoformat(), for_model)  # fmt: skip
            if self.hooks is not None:
                self.hooks.model_evicted(name, {"bytes": resident.bytes, "for": for_model})
            del resident
        if names:
            self._reclaim()
            self._changed()

    def _reclaim(self) -> None:
        """Return freed weights: collect cycles that still hold tensors, then CUDA's cached blocks."""
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def record(self, name: str, stats: BatchStats) -> None:
        """Add a run's batch statistics to the model's totals (reported as padding efficiency), and
        measure the model again: a run may have loaded more weights (an assistant model), which
        count toward the budget as the model's own and may send least recently used ones out."""
        with self._lock:
            resident = self._residents.get(name)
            if resident is not None:
                resident.work.add(stats)
        if resident is None:
            return
        size, _ = self._measure(resident.family)
        if size == resident.bytes:
            return
        log.info("model %s now holds %s (was %s)", name, format_size(size), format_size(resident.bytes))
        with self._lock:
            resident.bytes = self._measured[name] = size
        others = [c for c in self._candidates() if c.name != name]
        self._evict(lru_victims(others, size, self.budget), for_model=name)
        self._changed()

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """JSON-ready resident models and recent evictions, for the workers row."""
        with self._lock:
            residents = list(self._residents.values())
            evictions = list(self._evictions)
        models = [
            {"model": r.name, "task": r.task, "device": self.device, "dtype": r.dtype, "bytes": r.bytes,
             "loaded_at": r.loaded_at.isoformat(), "last_used": r.last_used.isoformat(), "pinned": r.pinned,
             "features": r.work.features, "real_tokens": r.work.real_tokens, "padded_tokens": r.work.padded_tokens,
             "forward_s": round(r.work.forward_s, 3)}
            for r in residents
        ]  # fmt: skip
        return models, evictions
