"""Data in and out where users keep it: item keys, text and key columns, Parquet and directory
input, Arrow tables and DataFrames, and the JSONL/CSV/Parquet exports (no database here)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producer.inputs import InvalidRecord, Keyed, read_input
from sluice.errors import ValidationError
from sluice.exports import ExportError, format_for, write_results, write_stream
from sluice.records import is_table, key_text, plain_row, table_records


# keys and columns ------------------------------------------------------------------------------
def test_a_key_field_is_the_items_key_not_a_model_field(tmp_path: Path) -> None:
    lines = ['{"key": "a-1", "text": "x"}', '{"key": 7, "text": "y", "lang": "en"}', '{"text": "z"}',
             '{"key": {"id": 1}, "text": "w"}', '{"key": [1], "text": "v"}', '{"key": null, "text": "u"}']  # fmt: skip
    (tmp_path / "a.jsonl").write_text("\n".join(lines), encoding="utf-8")
    got = list(read_input(tmp_path / "a.jsonl"))
    assert got[:3] == [Keyed("a-1", {"text": "x"}), Keyed("7", {"text": "y", "lang": "en"}), {"text": "z"}]
    assert got[3] == InvalidRecord("a.jsonl line 4: key 'key' is an object; a key must be a string or a number")
    assert got[4] == InvalidRecord("a.jsonl line 5: key 'key' is a list; a key must be a string or a number")
    assert got[5] == Keyed(None, {"text": "u"})
    (tmp_path / "a.csv").write_text("key,text\nk1,hello\n,bye\n", encoding="utf-8")
    assert list(read_input(tmp_path / "a.csv")) == [Keyed("k1", {"text": "hello"}), Keyed("", {"text": "bye"})]


def test_key_text_is_the_string_form() -> None:
    assert [key_text(v)[0] for v in (7, 1.5, True, "s", None)] == ["7", "1.5", "true", "s", None]
    assert key_text(float("nan"))[1] == "is nan; a key must be a string or a finite number"
    assert key_text("k" * 513)[1] == "has 513 characters, over the limit of 512"
    assert key_text(b"x")[1] == "is a bytes; a key must be a string or a number"


def test_database_values_become_json() -> None:
    loop: list[Any] = []
    loop.append(loop)
    row = {"d": Decimal("2.50"), "n": Decimal("3"), "u": UUID(int=1), "t": date(2024, 5, 6), "loop": loop}
    got = plain_row(row)
    assert {k: got[k] for k in "dnut"} == {"d": 2.5, "n": 3, "u": str(UUID(int=1)), "t": "2024-05-06"}


def test_text_and_key_columns_in_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,body,lang\n1,hello,en\n2,hallo,de\n", encoding="utf-8")
    got = list(read_input(tmp_path / "t.csv", text_column="body", key_column="id"))
    assert got == [Keyed("1", {"text": "hello", "lang": "en"}), Keyed("2", {"text": "hallo", "lang": "de"})]
    message = r"^column 'msg' \(--text-column\) is not in t.csv \(columns: id, body, lang\)$"
    with pytest.raises(ValidationError, match=message):
        list(read_input(tmp_path / "t.csv", text_column="msg"))
    (tmp_path / "t.jsonl").write_text('{"id": 3, "body": "a"}\n{"body": "b"}\n{"id": 4, "body": "c", "text": "d"}\n')
    got = list(read_input(tmp_path / "t.jsonl", text_column="body", key_column="id"))
    assert got[0] == Keyed("3", {"text": "a"})
    assert got[1] == InvalidRecord("t.jsonl line 2: no field 'id' (--key-column); its fields are 'body'")
    assert got[2] == InvalidRecord(
        "t.jsonl line 3: has a 'text' field and --text-column 'body'; drop or rename one of them"
    )


def test_column_flags_are_refused_where_there_are_no_columns(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"--key-column does not apply to .txt input"):
        read_input(tmp_path / "a.txt", key_column="id")
    with pytest.raises(ValidationError, match=r"--text-column does not apply to a directory"):
        read_input(tmp_path, text_column="body")


# Parquet ---------------------------------------------------------------------------------------
def test_parquet_rows_become_items(tmp_path: Path) -> None:
    table = pa.table({"id": [10, 11, 12], "body": ["a", "b", None], "n": [1.5, 2.5, 3.5]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=2)
    got = list(read_input(tmp_path / "data.parquet", text_column="body", key_column="id"))
    assert got == [Keyed("10", {"n": 1.5, "text": "a"}), Keyed("11", {"n": 2.5, "text": "b"}),
                   Keyed("12", {"n": 3.5, "text": None})]  # fmt: skip
    assert next(iter(read_input(tmp_path / "data.parquet"))) == {"id": 10, "body": "a", "n": 1.5}
    message = r"column 'text2' \(--text-column\) is not in data.parquet \(columns: id, body, n\)"
    with pytest.raises(ValidationError, match=message):
        read_input(tmp_path / "data.parquet", text_column="text2")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValidationError, match=r"bad\.parquet is not a readable Parquet file"):
        read_input(tmp_path / "bad.parquet")


def test_parquet_is_read_in_batches_not_whole(tmp_path: Path) -> None:
    """The first item comes with a few MB of Arrow memory, from a 30 MB file."""
    letters = np.random.default_rng(0).integers(97, 123, 30_000_000, dtype=np.uint8).tobytes().decode()
    texts = pa.array([letters[i : i + 200] for i in range(0, len(letters), 200)])
    pq.write_table(pa.table({"text": texts}), tmp_path / "big.parquet", row_group_size=10_000, compression="none")
    del letters, texts
    assert (tmp_path / "big.parquet").stat().st_size > 30e6
    before = pa.total_allocated_bytes()
    records = read_input(tmp_path / "big.parquet")
    first = next(records)
    assert isinstance(first, dict) and len(first["text"]) == 200
    assert pa.total_allocated_bytes() - before < 8e6


# directories -----------------------------------------------------------------------------------
def test_a_directory_is_one_item_per_file_keyed_by_path(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref", encoding="utf-8")
    (root / ".hidden.txt").write_text("no", encoding="utf-8")
    (root / "b.txt").write_text("bee\n", encoding="utf-8")
    (root / "a.md").write_text("ay", encoding="utf-8")
    (root / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    Image.new("RGB", (4, 4)).save(root / "sub" / "p.PNG")
    (root / "blob.bin").write_bytes(b"\x00\xff")
    got = list(read_input(root))
    assert [g.key for g in got if isinstance(g, Keyed)] == ["a.md", "b.txt", "blob.bin", "sub/c.txt", "sub/p.PNG"]
    assert [g.record for g in got if isinstance(g, Keyed)][:2] == [{"text": "ay"}, {"text": "bee\n"}]
    blob = got[2]
    assert isinstance(blob, Keyed) and isinstance(blob.record, InvalidRecord)
    assert "blob.bin: not valid UTF-8" in blob.record.error and "image extension" in blob.record.error
    assert got[4] == Keyed("sub/p.PNG", {"image": str((root / "sub" / "p.PNG").resolve())})


# tables ----------------------------------------------------------------------------------------
def test_arrow_tables_and_dataframes_are_items() -> None:
    import pandas as pd

    table = pa.table({"id": ["x", "y"], "body": ["one", "two"]})
    frame = pd.DataFrame({"id": [1, 2], "text": ["one", None], "w": [0.5, float("nan")]})
    assert is_table(table) and is_table(frame) and not is_table([{"text": "a"}])
    assert list(table_records(table, "the table", text_column="body", key_column="id")) == [
        Keyed("x", {"text": "one"}), Keyed("y", {"text": "two"}),
    ]  # fmt: skip
    assert list(table_records(frame, "the DataFrame", key_column="id")) == [
        Keyed("1", {"text": "one", "w": 0.5}), Keyed("2", {"text": None, "w": None}),
    ]  # fmt: skip
    with pytest.raises(ValidationError, match=r"column 'body' \(--text-column\) is not in the DataFrame"):
        table_records(frame, "the DataFrame", text_column="body")


# exports ---------------------------------------------------------------------------------------
def _rows(n: int, *, embed_from: int = 0, dim: int = 4, extra_at: int | None = None) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {"item": i, "key": f"k{i}", "status": "done", "label": f"l{i % 3}", "score": i / n,
                               "output": {"scores": [{"label": "a", "score": 0.5}]}, "error": None}  # fmt: skip
        if i >= embed_from:
            row["embedding"] = rng.standard_normal(dim).astype(np.float32).tolist()
        if i == extra_at:
            row["artifacts"] = [{"name": "mask.png"}]
        rows.append(row)
    return rows


def test_parquet_export_is_typed_and_bit_exact(tmp_path: Path) -> None:
    rows = _rows(2500, dim=384)
    assert write_results(iter(rows), tmp_path / "out.parquet") == 2500
    table = pq.read_table(tmp_path / "out.parquet")
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema == {"item": "int64", "key": "string", "status": "string", "label": "string", "score": "double",
                      "output": "string", "error": "string",
                      "embedding": "fixed_size_list<element: float>[384]"}  # fmt: skip
    got = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(2500, 384)
    want = np.asarray([r["embedding"] for r in rows], dtype="<f4")
    assert got.tobytes() == want.tobytes()
    assert table.column("key").to_pylist() == [r["key"] for r in rows]
    assert json.loads(table.column("output")[0].as_py()) == rows[0]["output"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_columns_that_show_up_late_widen_the_file(tmp_path: Path) -> None:
    """An embedding first seen after a batch without one, and an extra key, still get their columns."""
    rows = _rows(3000, embed_from=2100, extra_at=2900)
    for ext in ("parquet", "csv", "jsonl"):
        assert write_results(iter(rows), tmp_path / f"late.{ext}") == 3000
    table = pq.read_table(tmp_path / "late.parquet")
    assert table.column_names[-2:] == ["embedding", "artifacts"]
    assert table.column("embedding")[2099].as_py() is None
    assert table.column("embedding")[2100].as_py() == pytest.approx(rows[2100]["embedding"])
    assert json.loads(table.column("artifacts")[2900].as_py()) == [{"name": "mask.png"}]
    with (tmp_path / "late.csv").open(newline="") as fh:
        cells = list(csv.reader(fh))
    assert cells[0] == ["item", "key", "status", "label", "score", "output", "error", "artifacts"]
    assert cells[2901][-1] == '[{"name": "mask.png"}]' and cells[1][-1] == "" and len(cells) == 3001
    assert json.loads((tmp_path / "late.jsonl").read_text().splitlines()[2900])["artifacts"] == [{"name": "mask.png"}]


def test_texts_items_export_a_list_of_vectors(tmp_path: Path) -> None:
    row = {"item": 0, "key": None, "status": "done", "label": None, "score": None, "output": {"n_texts": 2},
           "error": None, "embedding": [[1.0, 2.0], [3.0, 4.0]]}  # fmt: skip
    rows: list[dict[str, Any]] = [row]
    write_results(rows, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("embedding").to_pylist() == [[[1.0, 2.0], [3.0, 4.0]]]
    rows.append({**rows[0], "item": 1, "embedding": [1.0, 2.0]})
    with pytest.raises(ExportError, match="item 1 has an embedding of another shape"):
        write_results(rows, tmp_path / "u.parquet")
    assert not (tmp_path / "u.parquet").exists()


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "out.csv").write_text("old", encoding="utf-8")

    def broken() -> Any:
        yield from _rows(1500)
        raise RuntimeError("database went away")

    for name in ("out.csv", "out.parquet", "out.jsonl"):
        with pytest.raises(RuntimeError):
            write_results(broken(), tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    assert (tmp_path / "out.csv").read_text() == "old"


def test_formats_and_streams(tmp_path: Path) -> None:
    assert [format_for(Path(n)) for n in ("a.JSONL", "b.csv", "c.parquet")] == ["jsonl", "csv", "parquet"]
    with pytest.raises(ValidationError, match=r"cannot tell the export format of 'r.xlsx'"):
        format_for(Path("r.xlsx"))
    with pytest.raises(ValidationError, match=r"directory .* does not exist"):
        write_results([], tmp_path / "no" / "r.csv")
    assert write_results([], tmp_path / "empty.parquet") == 0
    assert write_results([], tmp_path / "empty.csv") == 0
    assert (tmp_path / "empty.csv").read_bytes() == b"item,key,status,label,score,output,error\r\n"
    assert (tmp_path / "empty.csv").stat().st_mode & 0o044  # not a private temporary file's 0600
    assert pq.read_table(tmp_path / "empty.parquet").column_names[:2] == ["item", "key"]
    out = io.StringIO()
    assert write_stream(iter(_rows(3)), out, "csv") == 3
    assert out.getvalue().splitlines()[1].startswith('0,k0,done,l0,0.0,"{""embedding"": [')
    with pytest.raises(ValidationError, match="give a file with -o"):
        write_stream([], io.StringIO(), "parquet")
    with pytest.raises(ExportError, match="lacks; write the CSV to a file with -o"):
        write_stream(iter(_rows(3, extra_at=2)), io.StringIO(), "csv")
