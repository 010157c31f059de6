"""Sending chunk references to Redis: shared by producers and recovery (which runs in workers
and in ``sluice reconcile``), so neither side imports the other.

A message is a reference (job id, chunk index), never the documents. Chunks go to the model's
own queue while a live worker preloads the model, otherwise to the shared queue
(:mod:`sluice.routing`); the ledger records the queue on each chunk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from sluice.broker import redacted
from sluice.celery_app import PROCESS_CHUNK, create_app, redis_priority
from sluice.errors import BrokerError
from sluice.ledger import Ledger
from sluice.routing import WorkerRow, route
from sluice.settings import Settings
from sluice.unacked import Unacked, restore, unacked_chunks

#: How long a send may route on the live-worker list read by an earlier one. Liveness already
#: lags by a few heartbeats, so a second more changes little, and a backend sending one document
#: per job skips a database read per job. A chunk routed to a queue nobody reads any more is
#: re-routed by ``sluice reconcile``.
ROUTE_CACHE_S = 1.0


class Dispatcher:
    """Routes and sends chunk messages with the Celery app of ``settings`` (created on first send)."""

    def __init__(self, settings: Settings, ledger: Ledger, app: Celery | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self._app = app
        self._live: tuple[float, list[WorkerRow]] = (float("-inf"), [])

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = create_app(self.settings)
        return self._app

    def workers(self) -> list[WorkerRow]:
        """Live workers (fresh heartbeat, not stopped), read now."""
        found = self.ledger.load_workers()
        self._live = (time.monotonic(), found)
        return found

    def routing_workers(self) -> list[WorkerRow]:
        """The live workers as read at most ``ROUTE_CACHE_S`` ago (reading them again if older)."""
        read_at, found = self._live
        return found if time.monotonic() - read_at < ROUTE_CACHE_S else self.workers()

    def send(self, job_id: str, chunks: list[int], priority: int, model: str) -> str:
        """Send one message per chunk to the queue that serves ``model`` now; returns the queue.

        Raises :class:`BrokerError` when Redis cannot be reached (after Celery's own short retries).
        """
        queue = route(model, self.routing_workers(), self.settings.queue)
        try:
            for idx in chunks:
                self.app.send_task(PROCESS_CHUNK, args=[job_id, idx], queue=queue, priority=redis_priority(priority))
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise BrokerError(
                f"the broker at {redacted(self.app.conf.broker_url)} is unreachable ({type(exc).__name__}: {exc}); "
                "check that Redis is running and SLUICE_BROKER_URL points at it"
            ) from exc
        return queue

    def broker_lost_messages(self) -> bool:
        """Whether Redis may have lost messages since this was last asked.

        An epoch marker key holds the server's replication id (``master_replid``), which changes
        when a server restarts or a replica is promoted. The marker gone (restart without
        persistence, FLUSHALL) or holding another id (a failover: replication is asynchronous, so
        the new primary may lack the last messages) means yes. The first call ever also says so;
        re-sending then only duplicates messages, which is harmless.
        """
        key = f"{self.settings.queue}:epoch"
        with self._channel() as channel:
            client = channel.client
            epoch = _replication_id(client) or str(uuid.uuid4())
            seen = client.get(key)
            if seen is not None and (seen.decode() == epoch or not epoch.startswith("replid:")):
                return False
            client.set(key, epoch)
            return True

    def unacked_chunks(self, older_than: float) -> list[Unacked]:
        """Chunk messages on this deployment's queues delivered ``older_than`` seconds ago or more
        and not acked (:mod:`sluice.unacked`)."""
        with self._channel() as channel:
            return unacked_chunks(channel, self.settings.queue, older_than)

    def queue_size(self, queue: str) -> int:
        """Messages waiting on ``queue``, all priority steps together (not those delivered and unacked)."""
        with self._channel() as channel:
            return int(channel._size(queue))

    def take_turn(self, name: str, seconds: float) -> bool:
        """Whether this caller has the turn ``name`` for the next ``seconds`` (one Redis ``SET NX EX``
        per deployment): work every worker could do, done by one of them per interval."""
        with self._channel() as channel:
            key = f"{self.settings.queue}:turn:{name}"
            return bool(channel.client.set(key, "1", nx=True, ex=max(1, round(seconds))))

    def restore(self, deliveries: list[Unacked]) -> None:
        """Put these unacked deliveries back at the head of their queues."""
        with self._channel() as channel:
            restore(channel, [d.tag for d in deliveries])

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        """The broker's default kombu channel, for one exchange; :class:`BrokerError` when unreachable."""
        try:
            with self.app.connection_for_write() as conn:
                yield conn.default_channel
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise BrokerError(f"the broker at {redacted(self.app.conf.broker_url)} is unreachable: {exc}") from exc

    def ping(self, timeout: float = 3.0) -> None:
        """One round trip to the broker (readiness checks); :class:`BrokerError` when it is unreachable."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                conn.default_channel.client.ping()
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise BrokerError(f"the broker at {redacted(self.app.conf.broker_url)} is unreachable: {exc}") from exc

    def enqueue(self, job_id: str, chunks: list[int], priority: int, model: str | None = None) -> str:
        """Send the chunks and record where they went; returns the queue."""
        queue = self.send(job_id, chunks, priority, model or self.ledger.job_model(job_id))
        self.ledger.mark_sent(job_id, chunks, queue)
        return queue


def _replication_id(client: Any) -> str | None:
    """``replid:<master_replid>`` of the server, or None where INFO is refused (a managed Redis)."""
    try:
        replid = client.info("replication").get("master_replid")
    except RedisError:
        return None
    return f"replid:{replid}" if replid else None
