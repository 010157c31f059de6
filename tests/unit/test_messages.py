"""The malformed-message guard without a broker: envelope and argument checks, dropping (count,
log, dead-letter, hook), the chunk task's strategy and the guarded Redis channel, with fakes."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import kombu.transport
import pytest
from kombu.exceptions import ContentDisallowed
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.virtual.base import Channel as VirtualChannel

import worker.messages as messages
from sluice.celery_app import PROCESS_CHUNK, create_app
from sluice.settings import Settings
from worker.hooks import HookChain, Hooks
from worker.messages import (
    BAD_ARGUMENTS,
    BAD_CHUNK_INDEX,
    BAD_JOB_ID,
    BODY_MALFORMED,
    BODY_UNDECODABLE,
    CONTENT_REFUSED,
    ENVELOPE_MALFORMED,
    ENVELOPE_NOT_JSON,
    MAX_CHUNK_INDEX,
    NOT_A_CHUNK_TASK,
    REFUSED_BY_CELERY,
    GuardedChannel,
    chunk_ref_problem,
    message_problem,
    parse_envelope,
)

JOB = "5d1c3f0e-8a5b-4a8e-9f7b-2c0d6e4b1a93"  # fixed: test ids must be the same in every xdist worker
decode_body = VirtualChannel.decode_body.__get__(VirtualChannel.__new__(VirtualChannel))


def b64(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def envelope(body: Any = None, **changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "body": b64([[JOB, 0], {}, {}]) if body is None else body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": PROCESS_CHUNK, "id": str(uuid.uuid4())},
        "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "delivery_info": {"exchange": "", "routing_key": "q"}},
    }  # fmt: skip
    env.update(changes)
    return env


class FakeRedis:
    def __init__(self) -> None:
        self.lists: dict[str, list[str]] = {}
        self.fail: Exception | None = None

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        return self

    def lpush(self, key: str, value: str) -> FakeRedis:
        if self.fail:
            raise self.fail
        self.lists.setdefault(key, []).insert(0, value)
        return self

    def ltrim(self, key: str, start: int, stop: int) -> FakeRedis:
        self.lists[key] = self.lists.get(key, [])[start : stop + 1]
        return self

    def execute(self) -> None:
        pass

    def lrange(self, key: str, start: int, stop: int) -> list[str]:
        return self.lists.get(key, [])[start : None if stop == -1 else stop + 1]

    @contextmanager
    def acquire(self) -> Iterator[FakeRedis]:
        yield self


class Recorder(Hooks):
    def __init__(self) -> None:
        super().__init__(Settings())
        self.dropped: list[tuple[str, str]] = []

    def message_dropped(self, queue: str, reason: str) -> None:
        self.dropped.append((queue, reason))


@pytest.fixture(autouse=True)
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A clean process-wide guard per test, with a hook that records drops."""
    hooks = Recorder()
    monkeypatch.setattr(messages, "_guard", replace(messages._guard, hooks=hooks, counts=Counter()))
    yield hooks


# -- checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'"just a string"', ENVELOPE_MALFORMED),
        (b"{not json", ENVELOPE_NOT_JSON),
        (b"\xff\xfe", ENVELOPE_NOT_JSON),
        (json.dumps(envelope(properties=None)), ENVELOPE_MALFORMED),
        (json.dumps(envelope(properties={"delivery_info": {}})), ENVELOPE_MALFORMED),
        (json.dumps(envelope(headers=["task"])), ENVELOPE_MALFORMED),
        (json.dumps(envelope(headers={"task": "os.system", "id": "x"})), NOT_A_CHUNK_TASK),
        (json.dumps(envelope(headers={"id": "x"})), NOT_A_CHUNK_TASK),
        (json.dumps(envelope(**{"content-type": "application/x-python-serialize"})), CONTENT_REFUSED),
        (json.dumps(envelope(**{"content-type": "application/x-yaml"})), CONTENT_REFUSED),
        (json.dumps(envelope(**{"content-type": None})), CONTENT_REFUSED),
        (json.dumps(envelope(**{"content-encoding": "rot13"})), CONTENT_REFUSED),
        (json.dumps(envelope(headers={"task": PROCESS_CHUNK, "compression": "application/x-gzip"})), CONTENT_REFUSED),
        (json.dumps(envelope(body="!!!not*base64")), BODY_UNDECODABLE),
        (json.dumps(envelope(body=base64.b64encode(b"\xff\xfe").decode())), BODY_UNDECODABLE),
        (json.dumps(envelope(body=7)), ENVELOPE_MALFORMED),
    ],
)
def test_envelopes_kombu_cannot_take_are_refused(raw: bytes | str, reason: str) -> None:
    payload, problem = parse_envelope(raw, decode_body)
    assert payload is None and problem is not None and problem.reason == reason, problem


def test_a_real_envelope_passes() -> None:
    env = envelope()
    assert parse_envelope(json.dumps(env).encode(), decode_body) == (env, None)


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ([JOB, 0], {}, None),
        ([JOB], {"idx": MAX_CHUNK_INDEX}, None),
        ([], {"job_id": JOB.upper(), "idx": 3}, None),
        ("ab", {}, BAD_ARGUMENTS),
        ([JOB, 0, 1], {}, BAD_ARGUMENTS),
        ([JOB], {"chunk": 0}, BAD_ARGUMENTS),
        ([JOB, 0], {"idx": 0}, BAD_ARGUMENTS),
        ([JOB, 0], None, BAD_ARGUMENTS),
        ([1, 0], {}, BAD_JOB_ID),
        (["not-a-uuid\x00", 0], {}, BAD_JOB_ID),
        (["x" * 36, 0], {}, BAD_JOB_ID),
        ([JOB + "0", 0], {}, BAD_JOB_ID),
        ([JOB, -1], {}, BAD_CHUNK_INDEX),
        ([JOB, MAX_CHUNK_INDEX + 1], {}, BAD_CHUNK_INDEX),
        ([JOB, 2**70], {}, BAD_CHUNK_INDEX),
        ([JOB, True], {}, BAD_CHUNK_INDEX),
        ([JOB, "0"], {}, BAD_CHUNK_INDEX),
        ([JOB, 1.0], {}, BAD_CHUNK_INDEX),
    ],
)
def test_chunk_references(args: Any, kwargs: Any, reason: str | None) -> None:
    problem = chunk_ref_problem(args, kwargs)
    assert (problem and problem.reason) == reason, problem


class FakeMessage:
    def __init__(self, payload: Any = None, headers: Any = None, error: Exception | None = None) -> None:
        self.headers = {"task": PROCESS_CHUNK, "id": "t"} if headers is None else headers
        self._payload, self._error = payload, error
        self.delivery_info = {"exchange": "", "routing_key": "sluice.minilm"}
        self._raw = {"body": "raw"}
        self.body = b"body"
        self.channel = FakeChannel()
        self.acknowledged = False
        self.rejected: list[bool] = []

    @property
    def payload(self) -> Any:
        if self._error:
            raise self._error
        return self._payload

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.acknowledged = True
        self.rejected.append(requeue)


class FakeChannel:
    def __init__(self) -> None:
        self.redis = FakeRedis()

    def conn_or_acquire(self) -> Any:
        return self.redis.acquire()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (FakeMessage([[JOB, 0], {}, {}]), None),
        (FakeMessage("hello"), BODY_MALFORMED),
        (FakeMessage([[JOB, 0], {}]), BODY_MALFORMED),
        (FakeMessage([[JOB, 0], {}, None]), BODY_MALFORMED),
        (FakeMessage([[JOB, -3], {}, {}]), BAD_CHUNK_INDEX),
        (
            FakeMessage(error=ContentDisallowed("Refusing to deserialize untrusted content of type pickle")),
            CONTENT_REFUSED,
        ),
        (FakeMessage([[JOB, 0], {}, {}], headers={"task": "celery.accumulate", "id": "t"}), NOT_A_CHUNK_TASK),
        (FakeMessage([[JOB, 0], {}, {}], headers={"task": PROCESS_CHUNK}), NOT_A_CHUNK_TASK),
    ],
)
def test_message_problems(message: FakeMessage, reason: str | None) -> None:
    problem = message_problem(message)
    assert (problem and problem.reason) == reason, problem


# -- dropping ---------------------------------------------------------------------------------


def test_drop_counts_logs_dead_letters_and_tells_the_hooks(guard: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    redis = FakeRedis()
    huge = b"\x00\xff" + b"x" * 100_000
    for _ in range(2):
        messages.drop("sluice.minilm", messages.Problem(ENVELOPE_NOT_JSON, "Expecting value"), huge, redis.acquire)
    assert messages.dropped_counts() == {ENVELOPE_NOT_JSON: 2}
    assert guard.dropped == [("sluice.minilm", ENVELOPE_NOT_JSON)] * 2
    entries = list(messages.iter_dead_letters(redis, "sluice:dead-letter"))
    assert len(entries) == 2
    entry = entries[0]
    assert (
        entry["reason"] == ENVELOPE_NOT_JSON and entry["queue"] == "sluice.minilm" and entry["raw_bytes"] == len(huge)
    )
    assert entry["raw"].startswith("\x00\\xffxxx") and len(entry["raw"]) < messages.RAW_CHARS + 40
    assert caplog.text.count("dropped a message from sluice.minilm: envelope-not-json") == 2
    assert len(caplog.text) < 2000  # never the whole body


def test_dead_letter_list_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "DEAD_LETTER_MAX", 3)
    redis = FakeRedis()
    for i in range(5):
        messages.drop("q", messages.Problem(BAD_JOB_ID, str(i)), b"raw", redis.acquire)
    assert [e["detail"] for e in messages.iter_dead_letters(redis)] == ["4", "3", "2"]


def test_a_failed_dead_letter_write_is_logged_with_the_record(caplog: pytest.LogCaptureFixture) -> None:
    redis = FakeRedis()
    redis.fail = ConnectionError("redis went away")
    messages.drop("q", messages.Problem(BAD_JOB_ID, "nope"), b"the-raw-bytes", redis.acquire)
    assert "NOT dead-lettered (ConnectionError: redis went away)" in caplog.text and "the-raw-bytes" in caplog.text
    assert messages.dropped_counts() == {BAD_JOB_ID: 1}


def test_hook_chain_has_the_event() -> None:
    recorder = Recorder()
    HookChain(Settings(), [recorder]).message_dropped("q", "why")
    assert recorder.dropped == [("q", "why")]


# -- the strategy -------------------------------------------------------------------------------


class FakeConsumer:
    connection_errors = (ConnectionError,)


def strategy(monkeypatch: pytest.MonkeyPatch, behaviour: str) -> tuple[Any, list[Any]]:
    """chunk_strategy around a stand-in for Celery's default strategy."""
    calls: list[Any] = []

    def default(task: Any, app: Any, consumer: Any, **kw: Any) -> Any:
        def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
            calls.append(message)
            if behaviour == "refuse":  # Celery fails building the request (a bad header)
                raise ValueError("too many values to unpack (expected 3)")
            if behaviour == "connection-early":
                raise ConnectionError("broker gone")
            for callback in callbacks:  # handed over to the pool from here on
                callback("request")
            if behaviour == "task-fails":
                raise RuntimeError("after the hand-over")
            if behaviour == "connection":
                raise ConnectionError("broker gone")

        return handler

    monkeypatch.setattr("celery.worker.strategy.default", default)
    return messages.chunk_strategy(None, None, FakeConsumer()), calls


def test_strategy_passes_valid_messages_through(monkeypatch: pytest.MonkeyPatch) -> None:
    handle, calls = strategy(monkeypatch, "ok")
    message = FakeMessage([[JOB, 0], {}, {}])
    handle(message, None, None, None, set())
    assert calls == [message] and message.rejected == [] and messages.dropped_counts() == {}


def test_strategy_drops_invalid_messages_without_running_them(monkeypatch: pytest.MonkeyPatch) -> None:
    handle, calls = strategy(monkeypatch, "ok")
    message = FakeMessage([["not-a-uuid", 0], {}, {}])
    handle(message, None, None, None, set())
    assert calls == [] and message.rejected == [False]
    [entry] = messages.iter_dead_letters(message.channel.redis)
    assert (
        entry["reason"] == BAD_JOB_ID and entry["queue"] == "sluice.minilm" and json.loads(entry["raw"]) == message._raw
    )


def test_strategy_drops_what_celery_refuses_before_the_hand_over(monkeypatch: pytest.MonkeyPatch) -> None:
    handle, _ = strategy(monkeypatch, "refuse")
    message = FakeMessage([[JOB, 0], {}, {}])
    handle(message, None, None, None, set())
    assert message.rejected == [False] and messages.dropped_counts() == {REFUSED_BY_CELERY: 1}


@pytest.mark.parametrize("behaviour", ["task-fails", "connection", "connection-early"])
def test_strategy_leaves_later_failures_alone(monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    handle, _ = strategy(monkeypatch, behaviour)
    message = FakeMessage([[JOB, 0], {}, {}])
    with pytest.raises((RuntimeError, ConnectionError)):
        handle(message, None, None, None, set())
    assert message.rejected == [] and messages.dropped_counts() == {}


# -- the guarded channel ----------------------------------------------------------------------


class FakeClient:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.connection = self
        self.disconnected = False

    def parse_response(self, connection: Any, command: str, **options: Any) -> Any:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    def disconnect(self) -> None:
        self.disconnected = True


class FakeConnection:
    def __init__(self) -> None:
        self.delivered: list[tuple[Any, str]] = []

    def _deliver(self, payload: Any, queue: str) -> None:
        self.delivered.append((payload, queue))


class Cycle:
    def rotate(self, queue: str) -> None:
        pass


def channel(reply: Any) -> tuple[GuardedChannel, FakeRedis]:
    """A GuardedChannel with only what ``_brpop_read`` touches."""
    chan = GuardedChannel.__new__(GuardedChannel)
    redis = FakeRedis()
    chan.__dict__.update(
        client=FakeClient(reply), connection=FakeConnection(), sep=":", _queue_cycle=Cycle(),
        connection_errors=(ConnectionError,), conn_or_acquire=redis.acquire, _flush_brpop_reauth=lambda: None,
    )  # fmt: skip
    return chan, redis


def test_channel_delivers_valid_entries() -> None:
    env = envelope()
    chan, redis = channel((b"sluice.minilm:9", json.dumps(env).encode()))
    assert chan._brpop_read() is True
    assert chan.connection.delivered == [(env, "sluice.minilm")] and redis.lists == {}


@pytest.mark.parametrize("raw", [b"{not json", json.dumps(envelope(body="!!!not*base64")).encode(), b'"hello"'])
def test_channel_dead_letters_and_skips_poison(raw: bytes, guard: Recorder) -> None:
    chan, redis = channel((b"sluice.minilm:9", raw))
    assert chan._brpop_read() is True  # read something; the loop goes on
    assert chan.connection.delivered == []
    assert getattr(chan, "_in_poll") is None  # noqa: B009  (kombu types it as bool)
    [entry] = messages.iter_dead_letters(redis)
    assert entry["queue"] == "sluice.minilm" and entry["raw"] == raw.decode()
    assert [q for q, _ in guard.dropped] == ["sluice.minilm"]


def test_channel_connection_errors_still_raise() -> None:
    chan, _ = channel(ConnectionError("reset"))
    with pytest.raises(ConnectionError):
        chan._brpop_read()
    assert chan.client.disconnected


def test_malformed_broadcasts_are_dropped(guard: Recorder) -> None:
    chan, _ = channel(None)
    assert chan._deliver_fanout_message({"body": "x"}, "celery.pidbox") is False
    assert guard.dropped == [("celery.pidbox", ENVELOPE_MALFORMED)]


def test_install_routes_redis_urls_through_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    for alias in ("redis", "rediss", "sentinel"):
        monkeypatch.setitem(TRANSPORT_ALIASES, alias, TRANSPORT_ALIASES[alias])
    kombu.transport.get_transport_cls("redis")  # already resolved (and cached) by an earlier connection
    monkeypatch.setattr(kombu.transport, "_transport_cache", dict(kombu.transport._transport_cache))
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", queue="myqueue"))
    messages.install(app, "myqueue", hostname="cpu0@h")
    assert TRANSPORT_ALIASES["redis"] == TRANSPORT_ALIASES["rediss"] == "worker.messages:GuardedTransport"
    assert messages.dead_letter_key() == "myqueue:dead-letter" and messages._guard.accept == {"application/json"}
    with app.connection_for_read() as conn:
        assert conn.transport_cls == "redis" and conn.transport.Channel is GuardedChannel
