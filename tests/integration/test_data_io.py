"""Data in and out where users keep it, through the real worker: Parquet in and out (embeddings
bit-exact against the stored bytes), item keys in every export, Arrow tables and DataFrames, a
directory of files, and a SQL source (PostgreSQL table on the PostgreSQL stack, SQLite file on the
SQLite one)."""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, select, text

from producer.inputs import read_input
from sluice.db import Item
from sluice.errors import ValidationError
from sluice.sources import read_sql
from sluice.status import JobStatus
from tests.integration.conftest import Stack, sluice
from tests.models.common import mixed_texts
from tests.models.images import image_paths


def _job(out: str) -> str:
    return out.strip().splitlines()[0]


def _stored(stack: Stack, job: str) -> list[tuple[str | None, bytes | None]]:
    with stack.client.engine.connect() as conn:
        query = select(Item.key, Item.embedding).where(Item.job_id == job).order_by(Item.item)
        return [(row.key, row.embedding) for row in conn.execute(query)]


def test_parquet_in_parquet_out_bit_exact_with_keys(stack: Stack, tmp_path: Path) -> None:
    texts = mixed_texts(150, seed=11)
    ids = [1000 + 7 * n for n in range(150)]
    table = pa.table({"id": ids, "body": texts, "lang": ["en"] * 150})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=40)
    args = ["--model", "minilm", "--text-column", "body", "--key-column", "id", "--wait"]
    job = _job(sluice(stack, "submit", str(tmp_path / "data.parquet"), *args).stdout)
    sluice(stack, "results", job, "-o", str(tmp_path / "out.parquet"))
    out = pq.read_table(tmp_path / "out.parquet")
    assert str(out.schema.field("embedding").type) == "fixed_size_list<element: float>[384]"
    assert out.column("item").to_pylist() == list(range(150))
    assert out.column("key").to_pylist() == [str(i) for i in ids]
    stored = _stored(stack, job)
    assert [k for k, _ in stored] == [str(i) for i in ids]
    got = out.column("embedding").combine_chunks().flatten().to_numpy()
    assert got.astype("<f4").tobytes() == b"".join(blob or b"" for _, blob in stored)
    # The model saw `body` as its text and kept `lang`; `id` is the key, not a field.
    with stack.client.engine.connect() as conn:
        first = conn.execute(select(Item.input).where(Item.job_id == job, Item.item == 0)).scalar_one()
    assert first == {"text": texts[0], "lang": "en"}


def test_keys_in_jsonl_csv_and_parquet_exports(stack: Stack, tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [{"key": f"doc-{n}", "text": t} for n, t in enumerate(mixed_texts(20, seed=5))]
    lines[3]["key"] = 3  # a number is stored as its string form
    del lines[4]["key"]  # no key: null
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    job = _job(sluice(stack, "submit", str(tmp_path / "in.jsonl"), "--model", "minilm", "--wait").stdout)
    want: list[str | None] = [f"doc-{n}" for n in range(20)]
    want[3], want[4] = "3", None
    rows = [json.loads(line) for line in sluice(stack, "results", job).stdout.splitlines()]
    assert [r["key"] for r in rows] == want and [r["item"] for r in rows] == list(range(20))
    sluice(stack, "results", job, "-o", str(tmp_path / "r.csv"))
    sluice(stack, "results", job, "--format", "parquet", "-o", str(tmp_path / "r.pq"))
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as fh:
        assert [r["key"] for r in csv.DictReader(fh)] == [k or "" for k in want]
    assert pq.read_table(tmp_path / "r.pq").column("key").to_pylist() == want
    bad = sluice(stack, "results", job, "--format", "parquet", check=False)
    assert bad.returncode == 2 and "needs a file: add -o" in bad.stderr


def test_a_key_that_is_an_object_rejects_the_job(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"key": {"id": 1}, "text": "a"}\n', encoding="utf-8")
    out = sluice(stack, "submit", str(tmp_path / "bad.jsonl"), "--model", "minilm", check=False)
    assert out.returncode == 2
    assert "bad.jsonl line 1: key 'key' is an object; a key must be a string or a number" in out.stderr


def test_the_client_takes_arrow_tables_and_dataframes(stack: Stack) -> None:
    import pandas as pd

    texts = mixed_texts(12, seed=2)
    table = pa.table({"ref": [f"r{n}" for n in range(12)], "text": texts})
    frame = pd.DataFrame({"ref": range(12), "body": texts})
    dicts = [{"key": f"r{n}", "text": t} for n, t in enumerate(texts)]
    jobs = [stack.client.submit("minilm", table, key_column="ref"),
            stack.client.submit("minilm", frame, key_column="ref", text_column="body"),
            stack.client.submit("minilm", dicts)]  # fmt: skip
    assert all(stack.client.wait(j, timeout=300).status is JobStatus.COMPLETED for j in jobs)
    keys = [[r["key"] for r in stack.client.results(j)] for j in jobs]
    assert keys == [[f"r{n}" for n in range(12)], [str(n) for n in range(12)], [f"r{n}" for n in range(12)]]
    embeddings = [np.array([r["embedding"] for r in stack.client.results(j)]) for j in jobs]
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)  # batches may pad differently
    with pytest.raises(ValidationError, match=r"column 'body' \(--text-column\) is not in the Table"):
        stack.client.submit("minilm", table, text_column="body")


def test_a_directory_is_one_item_per_file(stack: Stack, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "more").mkdir(parents=True)
    texts = mixed_texts(3, seed=9)
    for name, body in zip(["b.txt", "a.md", "more/c.txt"], texts, strict=True):
        (docs / name).write_text(body, encoding="utf-8")
    (docs / ".DS_Store").write_bytes(b"\x00\x01")
    job = _job(sluice(stack, "submit", str(docs), "--model", "minilm", "--wait").stdout)
    rows = list(stack.client.results(job, include_input=True))
    assert [r["key"] for r in rows] == ["a.md", "b.txt", "more/c.txt"]
    assert [r["input"]["text"] for r in rows] == [texts[1], texts[0], texts[2]]
    assert all(r["status"] == "done" for r in rows)

    stack.model_dirs["tiny-vit"]  # built before the worker is asked to load it
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in image_paths()[:3]:
        shutil.copy(path, photos / Path(path).name)
    job = stack.client.submit("tiny-vit", read_input(photos))
    assert stack.client.wait(job, timeout=300).status is JobStatus.COMPLETED
    rows = list(stack.client.results(job))
    assert [r["key"] for r in rows] == sorted(p.name for p in photos.iterdir())
    assert all(r["label"] for r in rows)


@pytest.fixture
def source(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A user's ``tickets`` table: in the stack's PostgreSQL database, or in a SQLite file of its own."""
    url = stack.settings.resolved_database_url
    name = f"tickets_{uuid.uuid4().hex[:8]}"
    if not url.startswith("postgresql"):
        url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_engine(url)
    created = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [{"id": 100 + n, "body": t, "at": created.replace(day=1 + n)} for n, t in enumerate(mixed_texts(9, seed=4))]
    with engine.begin() as conn:
        conn.execute(text(f"create table {name} (id integer primary key, body text, at timestamp)"))
        conn.execute(text(f"insert into {name} (id, body, at) values (:id, :body, :at)"), rows)
    try:
        yield url, name
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"drop table {name}"))
        engine.dispose()


def test_a_sql_source(stack: Stack, source: tuple[str, str]) -> None:
    url, table = source
    query = f"select id, body from {table} order by id"
    args = ["--sql", query, "--source-url", url, "--key-column", "id", "--text-column", "body"]
    job = _job(sluice(stack, "submit", *args, "--model", "minilm", "--wait").stdout)
    assert [r["key"] for r in stack.client.results(job)] == [str(100 + n) for n in range(9)]
    # The scheduler's call: bound parameters, rows streamed a few at a time.
    since = datetime(2024, 5, 6)
    query = f"select id, body, at from {table} where at >= :since order by id"
    items = list(read_sql(url, query, {"since": since}, key_column="id", text_column="body", batch_size=2))
    assert [i.key for i in items] == ["105", "106", "107", "108"]
    assert isinstance(items[0].record, dict) and items[0].record["at"].startswith("2024-05-06")
    with pytest.raises(ValidationError, match=r"column 'text' \(--text-column\) is not in the query's result"):
        list(read_sql(url, query, {"since": since}, text_column="text"))
    with pytest.raises(ValidationError, match="the query failed on"):
        list(read_sql(url, "select nope from nowhere"))


def test_a_sql_source_is_read_only_and_keeps_passwords_out(stack: Stack, source: tuple[str, str]) -> None:
    url, table = source
    if url.startswith("postgresql"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"create sequence {table}_seq"))
        try:  # a query through a cursor cannot be a DELETE, but it can call a function that writes
            with pytest.raises(ValidationError, match="read-only transaction"):
                list(read_sql(url, f"select nextval('{table}_seq')"))
        finally:
            with engine.begin() as conn:
                conn.execute(text(f"drop sequence {table}_seq"))
            engine.dispose()
        bad = url.replace("postgres@", "postgres:s3cret@").replace("/" + url.rsplit("/", 1)[1], "/no_such_db")
        with pytest.raises(Exception, match="cannot connect") as exc:
            list(read_sql(bad, "select 1"))
        assert "s3cret" not in str(exc.value)
    with pytest.raises(ValidationError, match="is not an existing database file"):
        read_sql("sqlite:////nonexistent/crm.db", "select 1")
    out = sluice(stack, "submit", "x.jsonl", "--sql", "select 1", "--model", "minilm", check=False)
    assert out.returncode == 2 and "--sql reads no input file" in out.stderr
