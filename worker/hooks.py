"""Worker hooks: where metrics, webhooks and audit logging attach, without editing the runtime.

Subclass :class:`Hooks` and override the events you need (every method is a no-op here, as in
dramatiq's middleware); register the class by dotted path in ``SLUICE_HOOKS``
(``["mypkg.metrics:PrometheusHooks"]`` or ``mypkg.metrics.PrometheusHooks``). A hook class is
constructed once per worker process with the worker's :class:`~sluice.settings.Settings`.

Events and the thread they run on:

* ``worker_started`` / ``worker_stopping`` (main thread)
* ``chunk_claimed`` with the chunks a run took (its own and coalesced ones) (task thread)
* ``batch_finished`` after each forward pass, with its :class:`~worker.engine.BatchStats` (task thread)
* ``results_committed`` after each result transaction, rows written per job (writer thread)
* ``chunk_closed`` / ``chunk_failed`` when a run ends (task thread)
* ``model_loaded`` / ``model_evicted`` (task thread)
* ``job_finished`` with the jobs a result write completed (writer thread)
* ``message_dropped`` with the queue and reason of a malformed message (main thread)
* ``chunk_dead_lettered`` when a chunk's items are failed after too many lost runs (task thread)
* ``budget_changed`` when a model's token budget backs off after out-of-memory or grows back (task thread)
* ``commit_timed`` with the seconds one result transaction took (writer thread)

:class:`~sluice.ledger.Claim` carries ``submitted_at`` (its job's submission) and ``deliveries``
(more than 1: a redelivery) for such hooks; :mod:`worker.metrics` (``PrometheusHooks``, enabled by
``SLUICE_METRICS_PORT``) is built on these events alone.

A hook that raises is logged with its traceback and never stops the worker; hooks run inline, so
a slow one slows the worker: hand slow work (an HTTP call) to a thread or queue of your own.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.ledger import Claim
    from sluice.settings import Settings
    from worker.engine import BatchStats

log = logging.getLogger("sluice.worker")


class Hooks:
    """The events a worker goes through; every method is a no-op."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def worker_started(self, hostname: str, device: str, queues: list[str]) -> None: ...

    def worker_stopping(self, hostname: str) -> None: ...

    def chunk_claimed(self, claims: list[Claim]) -> None: ...

    def batch_finished(self, model: str, stats: BatchStats, n_results: int) -> None: ...

    def results_committed(self, model: str, by_job: dict[str, tuple[int, int]]) -> None:
        """``by_job``: (done, failed) rows this transaction wrote per job."""

    def chunk_closed(self, claims: list[Claim], stats: BatchStats) -> None: ...

    def chunk_failed(self, claims: list[Claim], error: BaseException) -> None: ...

    def model_loaded(self, model: str, info: dict[str, Any]) -> None: ...

    def model_evicted(self, model: str, info: dict[str, Any]) -> None: ...

    def job_finished(self, job_ids: list[str]) -> None: ...

    def message_dropped(self, queue: str, reason: str) -> None:
        """A message that can never be a valid chunk reference was dropped (:mod:`worker.messages`)."""

    def chunk_dead_lettered(self, model: str, job_id: str, idx: int, n_items: int) -> None:
        """Chunk ``idx`` of ``job_id`` was delivered too often without finishing: its ``n_items`` failed."""

    def budget_changed(self, model: str, tokens: int, reason: str) -> None:
        """``model``'s padded-token budget is now ``tokens``; ``reason``: ``oom`` (backed off) or ``recovered``."""

    def commit_timed(self, model: str, seconds: float, rows: int) -> None:
        """One result transaction of ``rows`` rows for ``model`` committed in ``seconds``."""


_EVENTS = [name for name, value in vars(Hooks).items() if callable(value) and not name.startswith("_")]


class HookChain(Hooks):
    """Calls every registered hook in order; one that raises is logged and the rest still run."""

    def __init__(self, settings: Settings, hooks: Sequence[Hooks] = ()) -> None:
        super().__init__(settings)
        self.hooks = list(hooks)
        for event in _EVENTS:
            setattr(self, event, self._caller(event))

    def _caller(self, event: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            for hook in self.hooks:
                try:
                    getattr(hook, event)(*args, **kwargs)
                except Exception:
                    log.exception("hook %s.%s failed; the worker carries on", type(hook).__name__, event)

        return call


def load_hooks(settings: Settings) -> HookChain:
    """The hooks named in ``settings.hooks``, constructed with ``settings``."""
    return HookChain(settings, [_import(path)(settings) for path in settings.hooks])


def _import(path: str) -> type[Hooks]:
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not name:
        raise ConfigError(f"SLUICE_HOOKS entry {path!r} should be 'package.module:Class'")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"SLUICE_HOOKS entry {path!r} cannot be imported: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Hooks)):
        raise ConfigError(f"SLUICE_HOOKS entry {path!r} is not a subclass of worker.hooks.Hooks")
    return found
