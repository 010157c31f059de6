"""Chunk messages a worker received and never acked, read from kombu's Redis bookkeeping.

kombu's Redis transport emulates acks: a delivered message moves from its queue's list into the
``unacked`` hash (delivery tag -> [message, exchange, routing key]), with its delivery time in the
``unacked_index`` sorted set, and leaves both when the worker acks it. A worker killed after it
received a chunk's message but before it claimed the chunk in the database leaves the message
there, and the chunk ``queued`` with no lease: nothing in the database says it is lost, and
kombu gives the message back only after ``visibility_timeout`` (an hour by default). CI saw one
such chunk hold a 320-item job at 312/320 after a worker was killed.

A live worker claims a delivered chunk within milliseconds, so a delivery that is old and whose
chunk is still ``queued`` went to a worker that died before claiming it; :mod:`sluice.recovery`
gives such messages back with kombu's own restore (the message returns to the head of its queue,
marked redelivered). Should the worker be alive after all, the copy costs one skipped delivery:
of two deliveries of a chunk only one claim wins.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from sluice.celery_app import PROCESS_CHUNK
from sluice.routing import is_deployment_queue

#: Seconds a delivered chunk may stay unclaimed before its message is taken for lost. A worker
#: claims within milliseconds of receiving; a worker restarted after a kill starts no sooner than
#: this (the supervisor's back-off, then the imports), so the restarted worker finds its dead
#: predecessor's delivery old enough.
CLAIM_GRACE_S = 2.0


class Unacked(NamedTuple):
    """One unacked chunk message: its delivery tag, the chunk it names, when it was delivered."""

    tag: str
    job_id: str
    idx: int
    delivered_at: float


def unacked_chunks(channel: Any, queue_prefix: str, older_than: float, now: float | None = None) -> list[Unacked]:
    """The chunk messages on this deployment's queues (``queue_prefix`` and ``queue_prefix.<model>``)
    delivered at least ``older_than`` seconds ago and not acked. ``channel`` is a kombu Redis channel.

    Entries of other applications sharing the Redis database, and entries that do not parse as a
    JSON chunk message, are left alone."""
    client = channel.client
    ceiling = (time.time() if now is None else now) - older_than
    scored = client.zrange(channel.unacked_index_key, 0, ceiling, byscore=True, withscores=True)
    if not scored:
        return []
    tags = [_text(tag) for tag, _ in scored]
    found = []
    for tag, (_, score), raw in zip(tags, scored, client.hmget(channel.unacked_key, tags), strict=True):
        ref = _chunk_ref(raw, queue_prefix)
        if ref is not None:
            found.append(Unacked(tag, ref[0], ref[1], float(score)))
    return found


def restore(channel: Any, tags: Iterable[str]) -> None:
    """Give these deliveries back to their queues at once (kombu's restore, atomic per tag: a tag
    acked meanwhile is gone from the hash and restores nothing)."""
    for tag in tags:
        channel.qos.restore_by_tag(tag, client=channel.client)


def _chunk_ref(raw: bytes | str | None, queue_prefix: str) -> tuple[str, int] | None:
    """(job id, chunk index) of an unacked entry that is a chunk message on one of our queues."""
    if raw is None:
        return None
    try:
        payload, _exchange, routing_key = json.loads(raw)
        if not is_deployment_queue(str(routing_key), queue_prefix):
            return None
        if payload["headers"].get("task") != PROCESS_CHUNK or payload.get("content-type") != "application/json":
            return None
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        (job_id, idx), _kwargs, _embed = json.loads(body)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not a chunk message as Sluice sends them: none of our business
    if not isinstance(job_id, str) or not isinstance(idx, int):
        return None
    return job_id, idx


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
