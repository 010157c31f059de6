"""Reading kombu's unacked entries: only this deployment's JSON chunk messages are Sluice's to judge."""

from __future__ import annotations

import base64
import json
from typing import Any

from sluice.celery_app import PROCESS_CHUNK
from sluice.unacked import _chunk_ref

JOB = "5b0c5a3e-8a7b-4c1e-9a52-0f2f0b8f6d11"


def entry(args: Any = (JOB, 3), queue: str = "sluice.minilm", task: str = PROCESS_CHUNK,
          content_type: str = "application/json", encoding: str = "base64") -> str:  # fmt: skip
    """An ``unacked`` hash value as kombu writes it: ``[message, exchange, routing key]``."""
    body = json.dumps([list(args), {}, {"callbacks": None}])
    message = {"body": base64.b64encode(body.encode()).decode() if encoding == "base64" else body,
               "content-type": content_type, "headers": {"task": task, "id": "t"},
               "properties": {"body_encoding": encoding, "delivery_tag": "d"}}  # fmt: skip
    return json.dumps([message, "", queue])


def test_a_chunk_message_on_our_queues_names_its_chunk() -> None:
    assert _chunk_ref(entry(), "sluice") == (JOB, 3)
    assert _chunk_ref(entry(queue="sluice").encode(), "sluice") == (JOB, 3)  # the shared queue; bytes from Redis
    assert _chunk_ref(entry(encoding="utf-8"), "sluice") == (JOB, 3)


def test_everything_else_is_left_alone() -> None:
    assert _chunk_ref(entry(queue="sluice-eu.minilm"), "sluice") is None  # another deployment's
    assert _chunk_ref(entry(task="app.other_task"), "sluice") is None  # another application's task
    assert _chunk_ref(entry(content_type="application/x-python-serialize"), "sluice") is None  # never unpickled
    assert _chunk_ref(entry(args=(JOB,)), "sluice") is None
    assert _chunk_ref(entry(args=(JOB, "3")), "sluice") is None
    assert _chunk_ref(entry(args=(7, 3)), "sluice") is None
    for raw in (None, "", "not json", "[1, 2]", json.dumps([{"body": "%%%"}, "", "sluice"]), '{"a": 1}'):
        assert _chunk_ref(raw, "sluice") is None, raw
