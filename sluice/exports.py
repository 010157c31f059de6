"""Write a job's results to a file: JSONL, CSV or Parquet, streamed, never half-visible.

Rows are :func:`sluice.ledger.codec.result_row` dicts, as :meth:`producer.client.Client.results`
yields them. They are read in batches of :data:`BATCH_ROWS` and written as they come, so a
million-item job exports in flat memory; the file is written under a temporary name in the target
directory and renamed at the end, so a reader (a scheduled sink's consumer) never sees half a file.

Columns: ``item``, ``key``, ``status``, ``label``, ``score``, ``output``, ``error`` (the CSV
export's order, :data:`~sluice.ledger.codec.RESULT_COLUMNS`), then ``embedding`` in Parquet (a
``fixed_size_list<float32>``, bit-exact with the stored vector; ``list<fixed_size_list<float32>>``
for a ``texts`` item), then any other key a row carries (``input``, ``artifacts``, ...) as a JSON
string, so new row keys are exported rather than refused. In CSV ``output`` is JSON and an
embedding is ``{"embedding": [...]}`` there (the API's CSV cells); JSONL is the rows as they are.

A column that first shows up late (the first embedding after a run of failed items, an extra key)
widens the file written so far: it is re-read in batches and rewritten with the new column, empty
for the earlier rows, so the schema never depends on how the first batch happened to look.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO, Any

from sluice.errors import SluiceError, ValidationError
from sluice.ledger.codec import RESULT_COLUMNS, csv_cells

FORMATS = ("jsonl", "csv", "parquet")
#: File extensions and the format each means.
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Rows per Parquet record batch (and per read from the row iterator): a 384-float embedding row
#: is ~10 KB as Python floats, so a batch stays around 10 MB.
BATCH_ROWS = 1024
#: Keys of a row that are columns of their own; any other key is exported as a JSON string.
KNOWN = (*RESULT_COLUMNS, "embedding")


class ExportError(SluiceError):
    """The rows cannot be written in the asked format (say what to do instead)."""


def format_for(path: Path) -> str:
    """The export format a file name asks for, by extension."""
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(EXTENSIONS)
        raise ValidationError(
            f"cannot tell the export format of {str(path)!r} from its extension; name it with one of {known}, "
            f"or give the format ({', '.join(FORMATS)})"
        )
    return fmt


def write_results(rows: Iterable[dict[str, Any]], path: Path, fmt: str | None = None) -> int:
    """Write result rows to ``path`` in ``fmt`` (default: by extension); returns rows written.

    The file appears whole or not at all (temporary name in the same directory, then a rename);
    an existing file at ``path`` is replaced only on success.
    """
    path = Path(path)
    fmt = fmt or format_for(path)
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    writer: Callable[[Iterator[dict[str, Any]], Path], int] = {
        "jsonl": _write_jsonl_file, "csv": _write_csv_file, "parquet": _write_parquet,
    }[fmt]  # fmt: skip
    with _replacing(path) as tmp:
        return writer(iter(rows), tmp)


def write_stream(rows: Iterable[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write result rows to an open text stream (standard output) as JSONL or CSV; returns rows
    written. Parquet needs a file (it is written at the end with its footer): use :func:`write_results`."""
    if fmt == "jsonl":
        return _jsonl(iter(rows), out)
    if fmt == "csv":
        return _csv(iter(rows), _CsvStream(out))
    raise ValidationError(f"format {fmt!r} cannot be written to standard output; give a file with -o")


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds, removed otherwise."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValidationError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist")
    # Not mkstemp: its file is private (0600) and would stay so after the rename.
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while batch := list(islice(rows, BATCH_ROWS)):
        yield batch


def _json(value: Any) -> str | None:
    """A value as a JSON string cell (None stays empty); anything JSON lacks is written as text."""
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _extras(row: dict[str, Any]) -> list[str]:
    return [k for k in row if k not in KNOWN]


# JSONL -------------------------------------------------------------------------------------------
def _jsonl(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        n += 1
    return n


def _write_jsonl_file(rows: Iterator[dict[str, Any]], tmp: Path) -> int:
    with tmp.open("w", encoding="utf-8") as out:
        return _jsonl(rows, out)


# CSV ---------------------------------------------------------------------------------------------
class _CsvStream:
    """CSV into an open stream; a column that shows up late cannot be added there."""

    def __init__(self, out: IO[str]) -> None:
        self.writer = csv.writer(out)

    def widen(self, columns: list[str], name: str) -> None:
        raise ExportError(
            f"a row has a field {name!r} that the CSV header ({', '.join(columns)}) lacks; "
            "write the CSV to a file with -o (it is rewritten with the new column) or use --format jsonl"
        )


class _CsvFile:
    """CSV into a file, which :meth:`widen` rewrites with one more (empty) column for the rows so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.out = path.open("w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.out)

    def widen(self, columns: list[str], name: str) -> None:
        self.out.close()
        old = self.path.with_name(self.path.name + ".old")
        os.replace(self.path, old)
        try:
            with (
                old.open(encoding="utf-8", newline="") as src,
                self.path.open("w", encoding="utf-8", newline="") as dst,
            ):
                reader, writer = csv.reader(src), csv.writer(dst)
                writer.writerow([*next(reader), name])
                writer.writerows([*cells, ""] for cells in reader)
        finally:
            old.unlink(missing_ok=True)
        self.out = self.path.open("a", encoding="utf-8", newline="")
        self.writer = csv.writer(self.out)


def _csv(rows: Iterator[dict[str, Any]], target: _CsvStream | _CsvFile) -> int:
    """CSV with a header: the result columns (the API's cells), then the rows' extra keys as JSON
    cells, in order of appearance; a key the header lacks goes to ``target.widen``."""
    n = 0
    extras: list[str] = []
    for row in rows:
        if n == 0:
            extras = _extras(row)
            target.writer.writerow([*RESULT_COLUMNS, *extras])
        for name in _extras(row):
            if name not in extras:
                target.widen([*RESULT_COLUMNS, *extras], name)
                extras.append(name)
        target.writer.writerow([*csv_cells(row), *("" if (v := _json(row.get(k))) is None else v for k in extras)])
        n += 1
    if n == 0:
        target.writer.writerow(RESULT_COLUMNS)
    return n


def _write_csv_file(rows: Iterator[dict[str, Any]], tmp: Path) -> int:
    target = _CsvFile(tmp)
    try:
        return _csv(rows, target)
    finally:
        target.out.close()


# Parquet -----------------------------------------------------------------------------------------
class _ParquetFile:
    """Record batches into one Parquet file, whose schema widens when a column first shows up."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.pa = pa
        self.path = path
        self.writer: Any = None
        self.embedding: Any = None  # the embedding column's Arrow type, once one is seen
        self.dim = 0
        self.nested = False  # a ``texts`` item: several embeddings per row
        self.extras: list[str] = []
        self.rows = 0

    def schema(self) -> Any:
        pa = self.pa
        fields = [
            pa.field("item", pa.int64()), pa.field("key", pa.string()), pa.field("status", pa.string()),
            pa.field("label", pa.string()), pa.field("score", pa.float64()), pa.field("output", pa.string()),
            pa.field("error", pa.string()),
        ]  # fmt: skip
        if self.embedding is not None:
            fields.append(pa.field("embedding", self.embedding))
        fields.extend(pa.field(name, pa.string()) for name in self.extras)
        return pa.schema(fields)

    def write(self, batch: list[dict[str, Any]]) -> None:
        if self._learn(batch) and self.writer is not None:
            self._widen()
        if self.writer is None:
            self._open()
        self.writer.write_batch(self._record_batch(batch))
        self.rows += len(batch)

    def close(self) -> None:
        """Finish the file; with no rows at all it still has the columns."""
        if self.writer is None:
            self._open()
        self.writer.close()

    def _open(self) -> None:
        import pyarrow.parquet as pq

        # Dictionary-encoding and min/max statistics suit the few-valued scalar columns; tried on
        # embedding floats they cost ~8x the write time and make the file larger.
        scalars = ["item", "status", "label", "score"]
        self.writer = pq.ParquetWriter(self.path, self.schema(), use_dictionary=scalars[1:], write_statistics=scalars)

    def _learn(self, batch: list[dict[str, Any]]) -> bool:
        """Note new columns (an embedding's type, extra keys) in ``batch``; whether the schema grew."""
        grew = False
        for row in batch:
            for name in _extras(row):
                if name not in self.extras:
                    self.extras.append(name)
                    grew = True
            vector = row.get("embedding")
            if vector is None:
                continue
            nested = bool(vector) and isinstance(vector[0], list)
            dim = len(vector[0]) if nested else len(vector)
            if self.embedding is None:
                self.dim, self.nested = dim, nested
                inner = self.pa.list_(self.pa.float32(), dim)
                self.embedding = self.pa.list_(inner) if nested else inner
                grew = True
            elif (dim, nested) != (self.dim, self.nested):
                raise ExportError(
                    f"item {row.get('item')} has an embedding of another shape than earlier items "
                    f"({'several' if nested else 'one'} of {dim} values, earlier "
                    f"{'several' if self.nested else 'one'} of {self.dim}); export this job as jsonl"
                )
        return grew

    def _widen(self) -> None:
        """Rewrite the file so far under the grown schema (new columns empty), batch by batch."""
        import pyarrow.parquet as pq

        self.writer.close()
        old = self.path.with_name(self.path.name + ".old")
        os.replace(self.path, old)
        try:
            self._open()
            schema = self.writer.schema
            for batch in pq.ParquetFile(old).iter_batches(batch_size=BATCH_ROWS):
                columns = [
                    batch.column(f.name) if f.name in batch.schema.names else self.pa.nulls(batch.num_rows, f.type)
                    for f in schema
                ]
                self.writer.write_batch(self.pa.RecordBatch.from_arrays(columns, schema=schema))
        finally:
            old.unlink(missing_ok=True)

    def _record_batch(self, batch: list[dict[str, Any]]) -> Any:
        pa = self.pa
        strings = {
            name: pa.array([r.get(name) for r in batch], pa.string()) for name in ("key", "status", "label", "error")
        }
        columns = {
            "item": pa.array([r.get("item") for r in batch], pa.int64()),
            **strings,
            "score": pa.array([r.get("score") for r in batch], pa.float64()),
            "output": pa.array([_json(r.get("output")) for r in batch], pa.string()),
        }
        if self.embedding is not None:
            columns["embedding"] = self._embeddings([r.get("embedding") for r in batch])
        for name in self.extras:
            columns[name] = pa.array([_json(r.get(name)) for r in batch], pa.string())
        schema = self.schema()
        return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)

    def _embeddings(self, vectors: list[Any]) -> Any:
        """One row's vector as ``fixed_size_list<float32>``: the stored float32 values exactly (they
        came out of float32, so the round trip through Python floats loses nothing)."""
        import numpy as np

        pa = self.pa
        if self.nested:
            return pa.array(vectors, self.embedding)
        present = [i for i, v in enumerate(vectors) if v is not None]
        values = np.zeros((len(vectors), self.dim), dtype=np.float32)
        if present:
            values[present] = np.asarray([vectors[i] for i in present], dtype=np.float32)
        mask = None if len(present) == len(vectors) else pa.array([v is None for v in vectors])
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=self.embedding, mask=mask)


def _write_parquet(rows: Iterator[dict[str, Any]], tmp: Path) -> int:
    sink = _ParquetFile(tmp)
    try:
        for batch in _batches(rows):
            sink.write(batch)
    except BaseException:
        if sink.writer is not None:
            sink.writer.close()  # release the file; the caller removes it
        raise
    sink.close()
    return sink.rows
