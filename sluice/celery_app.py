"""The Celery application shared by producers (which only send) and workers.

Settings follow the shared notes on running models under Celery: JSON only, late acks with
redelivery of work from lost workers, prefetch of one message, no result backend (results go
to SQL), Redis priority queues. Workers and producers build their app from the Settings they are
given (:func:`create_app`); the module-level ``app`` exists only for the ``celery`` command line
(``celery -A sluice.celery_app flower``) and reads the environment when first configured, so
importing this module neither starts nor contacts Redis.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from sluice.broker import broker_url, broker_use_ssl, clean_url, transport_options
from sluice.settings import Settings, get_settings

PROCESS_CHUNK = "sluice.process_chunk"
PRIORITY_LEVELS = 10


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings from Sluice's. A TLS broker gets ``broker_use_ssl`` (certificate checks on
    unless ``SLUICE_BROKER_TLS_VERIFY=false``: kombu alone would connect to ``rediss://`` unverified),
    a Sentinel broker its master's name and Sentinel options (:mod:`sluice.broker`)."""
    url = broker_url(settings)
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(PRIORITY_LEVELS)),
        "sep": ":",
        **transport_options(settings, url),
    }
    tls = broker_use_ssl(settings, url)
    if tls is not None:
        # kombu's process-wide connection pools are keyed on the URL and the transport options but
        # not on the TLS options: without this, a second app with other TLS settings (verification
        # off, another CA) would be handed connections made with the first one's.
        transport["sluice_tls"] = ",".join(f"{k}={v}" for k, v in sorted(tls.items()))
    return {
        "broker_url": clean_url(url),
        **({"broker_use_ssl": tls} if tls is not None else {}),
        "broker_transport_options": transport,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_default_priority": redis_priority(0),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def redis_priority(priority: int) -> int:
    """Map Sluice priority (9 = most urgent, like RabbitMQ) to Redis's steps (0 is served first)."""
    return PRIORITY_LEVELS - 1 - max(0, min(PRIORITY_LEVELS - 1, priority))


class SluiceCelery(Celery):  # type: ignore[misc]  # celery ships no type information
    """A Celery app that reads :class:`Settings` when first configured, not at import."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self._sluice_settings = settings
        super().__init__("sluice", **kwargs)

    def on_configure(self) -> None:
        self.conf.update(celery_config(self._sluice_settings or get_settings()))


def create_app(settings: Settings | None = None) -> SluiceCelery:
    return SluiceCelery(settings, set_as_current=False)


app = create_app()
