"""Fuzzing submit: whatever a caller passes, the client answers with a clear error and stores
nothing, or stores the whole job (every input position, the invalid ones as failed items with
their error, under ``skip_invalid``). Never another exception, never a partial job.

Runs against a real database of each backend, with sending disabled (``send`` returning None
means "not sent": the job stays stored, as when the broker is down).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from producer.client import Client
from producer.inputs import read_input
from sluice.db import jobs_table
from sluice.errors import SluiceError
from sluice.registry import BUNDLED_REGISTRY
from tests.conftest import make_settings

MAX_ITEM_CHARS = 300
#: ``SLUICE_FUZZ_EXAMPLES=2000`` for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


@pytest.fixture
def client(migrated_database_url: str, tmp_path: Path) -> Client:
    settings_ = make_settings(migrated_database_url, "redis://unused", tmp_path, models_file=BUNDLED_REGISTRY,
                              max_item_chars=MAX_ITEM_CHARS, chunk_size=3)  # fmt: skip
    client = Client(settings_)
    client.dispatcher.send = lambda *a, **k: None  # type: ignore[method-assign,assignment]
    return client


# values -----------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates and NUL included
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner,
                                                                                                 max_size=3),
                           max_leaves=8)  # fmt: skip
not_json = st.one_of(
    st.sets(st.integers(), max_size=2), st.binary(max_size=6), st.complex_numbers(max_magnitude=10),
    st.builds(object), st.just(float("nan")), st.just(float("inf")), st.integers(50, 120).map(nested),
    st.just(10**1500), st.dictionaries(st.integers(), st.text(max_size=3), min_size=1, max_size=2),
    st.integers(MAX_ITEM_CHARS - 20, MAX_ITEM_CHARS + 20).map(lambda n: "x" * n),
    st.lists(st.text(max_size=40), min_size=5, max_size=15), st.tuples(st.integers(), st.text(max_size=3)),
)  # fmt: skip
values = json_values | not_json
field_names = st.sampled_from(["text", "txt", "candidate_labels", "meta", "multi_label", "hypothesis_template"])
labels = st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3, unique=True)
good_records = st.one_of(
    any_text, st.builds(lambda t, ls: {"text": t, "candidate_labels": ls}, any_text, labels),
    st.builds(lambda t, more: {"text": t, **more}, any_text, st.dictionaries(any_text, json_values, max_size=2)),
)  # fmt: skip
records = st.one_of(
    good_records, good_records, good_records,
    st.builds(lambda t, more: {"text": t, **more}, any_text, st.dictionaries(field_names, values, max_size=2)),
    st.dictionaries(field_names | any_text, values, max_size=3),
    values,  # not a record at all: a number, a list, None, bytes...
)  # fmt: skip
good_params = st.none() | st.builds(lambda ls: {"candidate_labels": ls}, labels)
params = st.one_of(
    good_params, good_params, good_params,
    st.dictionaries(field_names | any_text, values, max_size=2), st.lists(st.integers(), max_size=2), any_text,
)  # fmt: skip
priorities = st.one_of(st.integers(0, 9), st.integers(0, 9), st.sampled_from([-1, 10, "3", True, 2.5, None]))
models = st.sampled_from(["minilm", "minilm-topics", "minilm", "minilm-topics", "no-such-model"])


def json_safe(value: Any, depth: int = 0) -> bool:
    """Independently of the client: can this be stored as JSON (finite, str keys, shallow)?"""
    if depth > 40:
        return False
    if value is None or isinstance(value, bool | str):
        return not isinstance(value, str) or not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, int):
        return abs(value) < 10**1000
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):  # a tuple is stored as a list, as json.dumps writes it
        return all(json_safe(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and json_safe(k) and json_safe(v, depth + 1) for k, v in value.items())
    return False


def surely_invalid(record: Any) -> bool:
    """Items any model here must refuse: not a string or object, a non-string text, a non-JSON value."""
    if isinstance(record, str):
        return not json_safe(record)
    if not isinstance(record, dict):
        return True
    return not isinstance(record.get("text"), str) or not json_safe(record)


def surely_valid(model: str, record: Any, params: Any) -> bool:
    """Items a model here must accept: JSON text and fields, small, with candidate labels for topics."""
    fields = {"text": record} if isinstance(record, str) else record
    if not isinstance(fields, dict) or not json_safe(fields) or not isinstance(fields.get("text"), str):
        return False
    if len(fields["text"]) > MAX_ITEM_CHARS or len(json.dumps({**fields, "text": ""})) > MAX_ITEM_CHARS:
        return False
    if model == "minilm-topics":
        ls = fields.get("candidate_labels", (params or {}).get("candidate_labels"))
        return isinstance(ls, list) and all(isinstance(x, str) and x for x in ls) and len(set(ls)) == len(ls) > 0
    return model == "minilm"


def count_jobs(client: Client) -> int:
    with client.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs_table)).scalar_one())


def check_submit(client: Client, submit: Any, n_inputs: int | None, skip_invalid: bool, inputs: list[Any]) -> None:
    """Submit; either a SluiceError with nothing stored, or the whole job stored."""
    before = count_jobs(client)
    try:
        job = submit()
    except SluiceError as exc:
        event(f"rejected: {type(exc).__name__}")
        assert str(exc).strip()
        assert count_jobs(client) == before, "a rejected submission stored a job"
        return
    event("stored")
    assert count_jobs(client) == before + 1
    rows = list(client.results(job, include_input=True))
    if n_inputs is not None:
        assert len(rows) == n_inputs
    assert [r["item"] for r in rows] == list(range(len(rows)))
    for row in rows:
        assert row["status"] in ("pending", "failed")
        if row["status"] == "failed":
            assert skip_invalid and row["error"] and row["error"].strip()
        assert json_safe(row["input"])
    for row, record in zip(rows, inputs, strict=False):
        if surely_invalid(record):
            assert row["status"] == "failed", (record, row)


@FUZZ
@given(model=models, items=st.lists(records, max_size=6), params=params, priority=priorities,
       skip_invalid=st.sampled_from([True, True, False]))  # fmt: skip
def test_submit_answers_every_input_cleanly(
    client: Client, model: str, items: list[Any], params: Any, priority: Any, skip_invalid: bool
) -> None:
    def submit() -> str:
        return client.submit(model, items, params=params, priority=priority, skip_invalid=skip_invalid)

    before = count_jobs(client)
    check_submit(client, submit, len(items), skip_invalid, items)
    good_call = type(priority) is int and 0 <= priority <= 9 and (params is None or json_safe(params))
    if good_call and isinstance(params, dict | None) and items and all(surely_valid(model, r, params) for r in items):
        assert count_jobs(client) == before + 1, "a valid submission was refused"


json_lines = st.builds(lambda d: json.dumps(d, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass"),
                       st.dictionaries(field_names | any_text, json_values, max_size=3))  # fmt: skip
byte_lines = st.one_of(
    st.binary(max_size=20), json_lines, any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b'{"text": NaN}', b'{"text": "a", "x": -Infinity}', b"[" * 3000 + b"]" * 3000,
                     b'{"text": "' + b"x" * (MAX_ITEM_CHARS + 1) + b'"}', b'{"text": "\\ud800"}',
                     b'{"text": 1' + b"0" * 5000 + b"}", b"\xef\xbb\xbf", b'"quoted', b"\x00"]),
)  # fmt: skip


@FUZZ
@given(lines=st.lists(byte_lines, max_size=6), suffix=st.sampled_from([".jsonl", ".txt", ".csv"]),
       model=st.sampled_from(["minilm", "minilm-topics"]), skip_invalid=st.booleans())  # fmt: skip
def test_submit_of_any_file_answers_cleanly(
    client: Client, tmp_path: Path, lines: list[bytes], suffix: str, model: str, skip_invalid: bool
) -> None:
    path = tmp_path / f"input{suffix}"
    path.write_bytes((b"text\n" if suffix == ".csv" else b"") + b"\n".join(lines) + b"\n")
    params = {"candidate_labels": ["a", "b"]} if model == "minilm-topics" else None
    try:
        expected = len(list(read_input(path)))
    except SluiceError:
        expected = None  # the file itself is refused (a CSV that is not UTF-8): so must the submit be

    def submit() -> str:
        return client.submit(model, read_input(path), params=params, skip_invalid=skip_invalid)

    before = count_jobs(client)
    check_submit(client, submit, expected, skip_invalid, [])
    if expected is None or expected == 0:
        assert count_jobs(client) == before
