"""``sluice worker``: preload models in this process, then consume chunks with a solo pool."""

from __future__ import annotations

import logging
import socket

from sluice.celery_app import app
from sluice.settings import Settings


def run_worker(
    settings: Settings,
    device: str,
    models: list[str],
    queues: list[str] | None = None,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> None:
    from worker.runtime import WorkerRuntime, configure_threads

    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_threads(settings)
    import worker.tasks  # registers the task with the app

    node = hostname or f"{device.replace(':', '')}@{socket.gethostname()}"
    runtime = WorkerRuntime(settings, device=device, hostname=node)
    runtime.preload(models)
    worker.tasks.init_runtime(runtime)
    # Solo pool: the process that loaded the models is the one that runs tasks (no fork, no
    # per-child model copies); concurrency comes from one worker process per device.
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={node}",
            f"--queues={','.join(queues or [settings.queue])}",
            f"--loglevel={loglevel}",
            "--without-mingle",
            "--without-gossip",
        ]
    )
