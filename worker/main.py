"""``sluice worker``: preload models in this process, then consume chunks with a solo pool.

The worker consumes the queue of each model it preloads plus the shared queue (jobs for models
nobody preloads, loaded on demand within ``--max-model-memory``), and keeps its row in the
``workers`` table current so producers can route to it and ``sluice workers`` can show it.
Everything it uses (the Celery app included) is built from the ``Settings`` passed in.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

from sluice.celery_app import create_app
from sluice.dispatch import Dispatcher
from sluice.errors import InfrastructureError
from sluice.ledger import Ledger
from sluice.routing import worker_queues
from sluice.settings import Settings
from sluice.status import WorkerStatus

log = logging.getLogger("sluice.worker")

#: Shutdowns someone asked for: Celery's warm shutdown on these signals ends the process with 0.
REQUESTED_STOP_SIGNALS = frozenset({"SIGTERM", "SIGINT"})


def exit_code(celery_code: object, stop_signals: list[str]) -> int:
    """The worker process's exit code: 0 only for a shutdown asked for by SIGTERM or SIGINT.

    A Celery worker loop that ends on its own ("Unrecoverable error", a remote shutdown, ...) is a
    failure whatever code Celery gives it (``worker_main`` even drops the code), so a supervisor
    restarts the worker. Celery's own non-zero codes pass through (64: usage error).
    """
    if REQUESTED_STOP_SIGNALS.intersection(stop_signals):
        return 0
    return celery_code if type(celery_code) is int and celery_code else 1


def modules_cache(settings: Settings, node: str) -> Path:
    """Where this worker's transformers copies and imports models' own code (``HF_MODULES_CACHE``):
    ``<var_dir>/hf_modules/<node>``, not the user's home. One directory per node, because
    transformers rewrites a file there whenever it differs from the model's, and two workers of a
    fleet loading one model at once would otherwise import each other's half-written copies."""
    from sluice.remote_code import use_modules_cache

    return use_modules_cache(settings.var_dir / "hf_modules" / re.sub(r"[^A-Za-z0-9@._-]", "_", node))


def run_worker(
    settings: Settings,
    device: str,
    models: list[str],
    queues: list[str] | None = None,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> None:
    from celery.signals import worker_ready, worker_shutting_down

    from sluice.logs import configure_logging
    from sluice.recovery import heal, reclaim_own
    from worker import messages, tasks
    from worker.hooks import load_hooks
    from worker.metrics import enable_metrics
    from worker.presence import Presence
    from worker.runtime import WorkerRuntime, configure_threads
    from worker.webhooks import enable_webhooks

    node = hostname or f"{device.replace(':', '')}@{socket.gethostname()}"
    configure_logging(settings, loglevel, worker=node)  # SLUICE_LOG_FORMAT; secrets masked either way
    modules_cache(settings, node)
    configure_threads(settings)
    app = create_app(settings)
    queues = queues or worker_queues(settings.queue, models)
    hooks = load_hooks(settings)
    metrics = enable_metrics(hooks, settings)  # SLUICE_METRICS_PORT: /metrics from a PrometheusHooks
    enable_webhooks(hooks, settings)  # SLUICE_WEBHOOK_SECRET: job callbacks, posted from a thread of their own
    messages.install(app, settings.queue, hooks, node)  # malformed messages are dropped, not fatal
    dispatcher = Dispatcher(settings, Ledger.for_settings(settings), app)
    runtime = WorkerRuntime(settings, device=device, hostname=node, hooks=hooks, dispatcher=dispatcher)

    def beat() -> None:
        runtime.renew_leases()
        # A message lost with a killed worker (delivered and never claimed, or popped and never
        # recorded) comes back without a reconcile process: one worker per interval heals them.
        heal(dispatcher, settings.heartbeat_seconds)

    presence = Presence(runtime.ledger, node, runtime.device, queues, settings.max_model_memory,
                        settings.heartbeat_seconds, runtime.pool.snapshot, on_beat=beat)  # fmt: skip
    if metrics:
        presence.static["metrics"] = metrics  # listed by `sluice workers`
    runtime.pool.on_change = presence.report

    def ready(**_: Any) -> None:
        presence.report(WorkerStatus.RUNNING)

    worker_ready.connect(ready, weak=False)
    stop_signals: list[str] = []
    worker_shutting_down.connect(lambda sig=None, **_: stop_signals.append(str(sig)), weak=False)
    # A node restarted under the same name (by the supervisor or Compose) gets back at once the
    # chunks its killed predecessor held, instead of after the lease or visibility timeout.
    try:
        reclaim_own(dispatcher, node)
    except InfrastructureError as exc:  # Celery waits for the broker below; reconcile does this later
        log.warning("could not reclaim at start (%s); sluice reconcile will", exc)
    presence.start()
    try:
        runtime.preload(models)
        tasks.register(app, runtime)
        hooks.worker_started(node, runtime.device, queues)
        # Solo pool: the process that loaded the models is the one that runs tasks (no fork, no
        # per-child model copies); concurrency comes from one worker process per device.
        celery_code = app.start(
            [
                *(["--quiet"] if settings.log_format == "json" else []),  # no banner amid JSON lines
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--hostname={node}",
                f"--queues={','.join(queues)}",
                f"--loglevel={loglevel}",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        hooks.worker_stopping(node)
        presence.stop()
    code = exit_code(celery_code, stop_signals)
    if code:
        log.error("the Celery worker stopped on its own (code %r); exiting with %d", celery_code, code)
        raise SystemExit(code)
