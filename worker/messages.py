"""The worker's guard against messages that can never be a valid chunk reference.

A Sluice queue carries one kind of message: ``sluice.process_chunk(job_id, idx)`` in Celery's
protocol 2, JSON-encoded. Anything else that lands on a queue (a body that is not Celery's
``[args, kwargs, embed]`` triple, an envelope that is not JSON, a body that is not valid base64,
a pickle/yaml/unknown content type, arguments of the wrong type or range) is dropped once: moved
to the dead-letter list with the reason, logged at WARNING, counted, and reported to the hooks
(``message_dropped``). It never stops the worker and is never requeued: left to kombu and Celery,
some of these made the worker exit ("Unrecoverable error", restored to the queue for the next
worker to die on) and others were rejected and requeued in a tight loop.

Two layers, each a try/except around the normal path:

* :class:`GuardedChannel` (kombu's Redis channel, and :class:`GuardedSentinelChannel` for
  ``sentinel://`` brokers, installed in the worker process by :func:`install`): the raw list
  entry a BRPOP returned must be a JSON envelope of the shape kombu and Celery index into, with
  an accepted content type (JSON only; pickle and yaml are refused before anything deserialises
  them) and a body that decodes. Otherwise the raw bytes go to the
  dead-letter list and the entry is skipped: it was popped and never entered kombu's unacked
  set, so nothing restores it.
* :func:`chunk_strategy` (the chunk task's Celery ``Strategy``): the decoded message must be
  ``[[job_id, idx], {}, {...}]`` with a UUID job id and an index the ledger can hold; anything
  Celery itself refuses while building the request also ends here instead of in the event loop.
  Such a message is dead-lettered and rejected without requeue (acked).

The dead-letter list is one Redis list per deployment, ``<SLUICE_QUEUE>:dead-letter`` (e.g.
``sluice:dead-letter``), newest first, capped at :data:`DEAD_LETTER_MAX` entries; each entry is a
JSON object ``{"reason", "detail", "queue", "raw", "raw_bytes", "at", "worker"}`` where ``raw`` is
the message as received, escaped and cut to :data:`RAW_CHARS` characters. Transient failures
(the database is down) are not this module's business: the task still requeues those.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from queue import Empty
from typing import TYPE_CHECKING, Any, NamedTuple

import kombu.transport as kombu_transport
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads as kombu_loads

from sluice.celery_app import PROCESS_CHUNK

if TYPE_CHECKING:
    from celery import Celery

    from worker.hooks import Hooks

log = logging.getLogger("sluice.worker")

DEAD_LETTER_SUFFIX = ":dead-letter"
DEAD_LETTER_MAX = 10_000  # newest kept: a flood of poison must not fill Redis
RAW_CHARS = 4096  # of each message kept in its dead-letter entry
DETAIL_CHARS = 300  # of the reason's detail, in the log line and the entry
MAX_CHUNK_INDEX = 2**31 - 1  # chunks.idx is a 32-bit INTEGER column
JSON_CONTENT_TYPES = frozenset({"application/json"})
_KOMBU_REDIS = "kombu.transport.redis:Transport"
_GUARDED_REDIS = f"{__name__}:GuardedTransport"
_KOMBU_SENTINEL = "kombu.transport.redis:SentinelTransport"
_GUARDED_SENTINEL = f"{__name__}:GuardedSentinelTransport"

# Reasons: stable codes for counters and hooks; the detail says what exactly was wrong.
ENVELOPE_NOT_JSON = "envelope-not-json"
ENVELOPE_MALFORMED = "envelope-malformed"
CONTENT_REFUSED = "content-type-refused"
BODY_UNDECODABLE = "body-undecodable"
NOT_A_CHUNK_TASK = "not-a-chunk-task"
BODY_MALFORMED = "body-malformed"
BAD_ARGUMENTS = "bad-arguments"
BAD_JOB_ID = "bad-job-id"
BAD_CHUNK_INDEX = "bad-chunk-index"
REFUSED_BY_CELERY = "refused-by-celery"


class Problem(NamedTuple):
    """Why a message can never be a valid chunk reference."""

    reason: str
    detail: str


@dataclass
class _Guard:
    """Process-wide state: where dead letters go, who hears about drops, what was dropped."""

    dead_letter_key: str = "sluice" + DEAD_LETTER_SUFFIX
    accept: frozenset[str] = JSON_CONTENT_TYPES
    hostname: str | None = None
    hooks: Hooks | None = None
    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


_guard = _Guard()


def install(app: Celery, queue: str, hooks: Hooks | None = None, hostname: str | None = None) -> None:
    """In the worker process, before the worker starts: consume Redis through
    :class:`GuardedTransport` and dead-letter to ``<queue>:dead-letter`` (``queue``: the shared
    queue, ``SLUICE_QUEUE``). Producers need none of this."""
    from kombu.serialization import prepare_accept_content

    _guard.dead_letter_key = queue + DEAD_LETTER_SUFFIX
    accepted = prepare_accept_content(app.conf.accept_content)  # type: ignore[no-untyped-call]
    _guard.accept = frozenset(accepted) & JSON_CONTENT_TYPES
    _guard.hooks, _guard.hostname = hooks, hostname
    guarded = {"redis": (_KOMBU_REDIS, _GUARDED_REDIS), "rediss": (_KOMBU_REDIS, _GUARDED_REDIS),
               "sentinel": (_KOMBU_SENTINEL, _GUARDED_SENTINEL)}  # fmt: skip
    for alias, (stock, guard) in guarded.items():  # redis+socket:// resolves through "redis" too
        if TRANSPORT_ALIASES.get(alias) == stock:
            TRANSPORT_ALIASES[alias] = guard
            kombu_transport._transport_cache.pop(alias, None)  # resolved before: resolve again


def dropped_counts() -> dict[str, int]:
    """Messages this process dropped, by reason (for a metrics exporter or a health check)."""
    with _guard.lock:
        return dict(_guard.counts)


def dead_letter_key() -> str:
    return _guard.dead_letter_key


# -- checks -------------------------------------------------------------------------------


def _text(item: bytes | str) -> str:
    """As kombu's ``bytes_to_str``: bytes that are not UTF-8 become replacement characters."""
    return item.decode(errors="replace") if isinstance(item, bytes) else item


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _describe(value: object) -> str:
    return _cut(repr(value), 80)


def envelope_problem(
    payload: object, accept: frozenset[str] = JSON_CONTENT_TYPES, task: str | None = PROCESS_CHUNK
) -> Problem | None:
    """What kombu and Celery would trip over in a parsed envelope (before the body is decoded).

    ``task``: the protocol-2 task header a message must carry (a Sluice queue carries chunk
    messages only: another task name, Celery's built-in ones included, is never run from it).
    """
    if not isinstance(payload, dict):
        return Problem(ENVELOPE_MALFORMED, f"envelope is {type(payload).__name__}, not an object")
    props = payload.get("properties")
    if not isinstance(props, dict):
        return Problem(ENVELOPE_MALFORMED, "envelope has no properties object")
    if not isinstance(props.get("delivery_tag"), str):
        return Problem(ENVELOPE_MALFORMED, f"delivery_tag is {_describe(props.get('delivery_tag'))}")
    info = props.get("delivery_info")
    if not (
        isinstance(info, dict) and isinstance(info.get("exchange"), str) and isinstance(info.get("routing_key"), str)
    ):
        return Problem(ENVELOPE_MALFORMED, f"delivery_info is {_describe(info)}")
    headers = payload.get("headers")
    if not isinstance(headers, dict):
        return Problem(ENVELOPE_MALFORMED, f"headers are {_describe(headers)}")
    if task is not None and headers.get("task") != task:
        return Problem(NOT_A_CHUNK_TASK, f"task header is {_describe(headers.get('task'))}, not {task!r}")
    content_type = payload.get("content-type")
    if content_type not in accept:
        return Problem(CONTENT_REFUSED, f"content type {_describe(content_type)} is not accepted")
    if headers.get("compression"):
        return Problem(CONTENT_REFUSED, f"compressed bodies ({_describe(headers['compression'])}) are not accepted")
    encoding = payload.get("content-encoding")
    if not (isinstance(encoding, str) and encoding.lower() in {"utf-8", "utf8"}):
        return Problem(CONTENT_REFUSED, f"content encoding {_describe(encoding)} is not utf-8")
    if not isinstance(payload.get("body"), str):
        return Problem(ENVELOPE_MALFORMED, f"body is {type(payload.get('body')).__name__}, not a string")
    if props.get("body_encoding") not in (None, "base64"):
        return Problem(BODY_UNDECODABLE, f"body encoding {_describe(props.get('body_encoding'))} is not base64")
    return None


def parse_envelope(
    item: bytes | str, decode_body: Callable[[str, str | None], Any], accept: frozenset[str] = JSON_CONTENT_TYPES
) -> tuple[dict[str, Any] | None, Problem | None]:
    """A raw Redis list entry as kombu will see it, or why it must not reach kombu."""
    try:
        payload = kombu_loads(_text(item))  # type: ignore[no-untyped-call]
    except Exception as exc:
        return None, Problem(ENVELOPE_NOT_JSON, f"{type(exc).__name__}: {exc}")
    problem = envelope_problem(payload, accept)
    if problem is None:
        try:
            body = decode_body(payload["body"], payload["properties"].get("body_encoding"))
            if isinstance(body, bytes):
                body.decode("utf-8")
        except Exception as exc:
            problem = Problem(BODY_UNDECODABLE, f"{type(exc).__name__}: {exc}")
    return (payload, None) if problem is None else (None, problem)


def chunk_ref_problem(args: object, kwargs: object) -> Problem | None:
    """Whether ``process_chunk(*args, **kwargs)`` names a chunk that can exist: a job id that is a
    UUID string and a chunk index the ledger can store. Checked before any work."""
    names = ("job_id", "idx")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return Problem(BAD_ARGUMENTS, f"args {_describe(args)}, kwargs {_describe(kwargs)}")
    given = len(args)
    if given > 2 or set(kwargs) - set(names[given:]) or given + len(kwargs) != 2:
        return Problem(BAD_ARGUMENTS, f"want (job_id, idx); got args {_describe(args)}, kwargs {_describe(kwargs)}")
    job_id, idx = [*list(args), *(kwargs[n] for n in names[given:])]
    if not isinstance(job_id, str) or len(job_id) != 36:
        return Problem(BAD_JOB_ID, f"job id {_describe(job_id)} is not a UUID string")
    try:
        uuid.UUID(job_id)
    except ValueError:
        return Problem(BAD_JOB_ID, f"job id {_describe(job_id)} is not a UUID string")
    if type(idx) is not int or not 0 <= idx <= MAX_CHUNK_INDEX:
        return Problem(BAD_CHUNK_INDEX, f"chunk index {_describe(idx)} is not an int in [0, {MAX_CHUNK_INDEX}]")
    return None


def message_problem(message: Any) -> Problem | None:
    """A kombu message of the chunk task: its headers, its decoded body and its arguments."""
    headers = message.headers
    if not isinstance(headers, dict) or headers.get("task") != PROCESS_CHUNK:
        return Problem(NOT_A_CHUNK_TASK, f"no protocol-2 {PROCESS_CHUNK} header")
    if not isinstance(headers.get("id"), str):
        return Problem(NOT_A_CHUNK_TASK, f"task id is {_describe(headers.get('id'))}")
    try:
        body = message.payload  # decoded with the consumer's accept list; cached for Celery
    except Exception as exc:  # ContentDisallowed (refused before deserialising), DecodeError
        reason = CONTENT_REFUSED if type(exc).__name__ == "ContentDisallowed" else BODY_MALFORMED
        return Problem(reason, f"{type(exc).__name__}: {exc}")
    if not (isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[2], dict)):
        return Problem(BODY_MALFORMED, f"body is {_describe(body)}, not [args, kwargs, embed]")
    return chunk_ref_problem(body[0], body[1])


# -- dropping -------------------------------------------------------------------------------


def _raw_text(raw: object) -> tuple[str, int]:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace"), len(raw)
    if not isinstance(raw, str):
        try:
            raw = json.dumps(raw, default=repr)
        except Exception:
            raw = repr(raw)
    return raw, len(raw.encode("utf-8", errors="backslashreplace"))


def drop(
    queue: str,
    problem: Problem,
    raw: object,
    client: Callable[[], AbstractContextManager[Any]] | None = None,
) -> None:
    """Count, log and dead-letter one message that can never be valid (``client``: a context
    manager factory yielding a redis-py client; without one the message is only logged)."""
    detail = _cut(problem.detail, DETAIL_CHARS)
    with _guard.lock:
        _guard.counts[problem.reason] += 1
    where = "not dead-lettered (no Redis client)"
    if client is not None:
        text, size = _raw_text(raw)
        record = json.dumps({
            "reason": problem.reason, "detail": detail, "queue": queue, "raw": _cut(text, RAW_CHARS),
            "raw_bytes": size, "at": datetime.now(UTC).isoformat(), "worker": _guard.hostname,
        })  # fmt: skip
        key = _guard.dead_letter_key
        try:
            with client() as redis:
                redis.pipeline(transaction=False).lpush(key, record).ltrim(key, 0, DEAD_LETTER_MAX - 1).execute()
            where = f"dead-lettered to {key}"
        except Exception as exc:  # the message is gone either way; the log line keeps the record
            where = f"NOT dead-lettered ({type(exc).__name__}: {exc}): {_cut(record, 1000)}"
    log.warning("dropped a message from %s: %s: %s; %s", queue, problem.reason, detail, where)
    if _guard.hooks is not None:
        _guard.hooks.message_dropped(queue, problem.reason)


# -- layer 1: the raw Redis entry -----------------------------------------------------------


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that an entry that is not a valid envelope is dead-lettered
    and skipped instead of raising into the worker's event loop."""

    def _checked(self, item: bytes | str, queue: str) -> dict[str, Any] | None:
        payload, problem = parse_envelope(item, self.decode_body, _guard.accept)
        if problem is not None:
            drop(queue, problem, item, self.conn_or_acquire)
        return payload

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read with the envelope parse guarded; delivery (into Celery)
        # and connection errors behave exactly as before.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next iteration reconnects
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = _text(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._checked(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        """Broadcasts (control commands): a malformed one reaches every worker at once."""
        problem = envelope_problem(message, _guard.accept, task=None)
        if problem is not None:
            drop(exchange, problem, message)  # not dead-lettered: every worker got a copy
            return False
        return bool(super()._deliver_fanout_message(message, exchange))  # type: ignore[no-untyped-call]


class GuardedTransport(kombu_redis.Transport):
    Channel = GuardedChannel


class GuardedSentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (the master found through the Sentinels) with the same guard."""


class GuardedSentinelTransport(kombu_redis.SentinelTransport):
    Channel = GuardedSentinelChannel


# -- layer 2: the chunk task's Celery strategy ------------------------------------------------


def _channel_client(message: Any) -> Callable[[], AbstractContextManager[Any]] | None:
    return getattr(getattr(message, "channel", None), "conn_or_acquire", None)


def chunk_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """The chunk task's ``Strategy``: Celery's default one behind a check of the message.

    A message that is not a valid chunk reference, or that Celery fails on before the request is
    handed to the pool, is dead-lettered and rejected without requeue. Failures after the hand-over
    (the task's own, connection errors) go where they always went.
    """
    from celery.worker.strategy import default

    handler = default(task, app, consumer, **kwargs)
    connection_errors = tuple(consumer.connection_errors or ())

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        problem = message_problem(message)
        if problem is None:
            handed: list[Any] = []
            try:
                return handler(message, body, ack, reject, [*(callbacks or ()), handed.append], **kw)
            except Exception as exc:
                if handed or isinstance(exc, connection_errors):
                    raise
                problem = Problem(REFUSED_BY_CELERY, f"{type(exc).__name__}: {exc}")
        queue = (message.delivery_info or {}).get("routing_key") or "?"
        drop(str(queue), problem, getattr(message, "_raw", None) or message.body, _channel_client(message))
        if not message.acknowledged:
            message.reject_log_error(log, connection_errors, requeue=False)
        return None

    return task_message_handler


def iter_dead_letters(client: Any, key: str | None = None) -> Iterator[dict[str, Any]]:
    """The dead-letter entries, newest first (for tools and tests)."""
    for entry in client.lrange(key or _guard.dead_letter_key, 0, -1):
        yield json.loads(entry)
