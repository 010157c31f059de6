"""Read job input: ``.jsonl`` (one object per line), ``.csv`` (header row), ``.txt`` (one document
per line), ``.parquet`` (read in record batches, never whole), or a directory (one item per file).

Readers yield one record per input position. A line that cannot be read (bad UTF-8, bad JSON)
yields an :class:`InvalidRecord` that says where and why, so validation can report it with the
others, or store it as a failed item, instead of silently dropping or shifting positions.

A ``key`` field (or the ``key_column``) becomes the item's key and ``text_column`` its ``text``
(:func:`sluice.records.keyed_record`, the rule every source follows); a row with a key comes as a
:class:`Keyed`. A directory's files are keyed by their path inside it.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sluice.errors import ValidationError
from sluice.records import BATCH_ROWS, InvalidRecord, Keyed, Record, batch_records, check_columns, keyed_record

__all__ = ["READERS", "InvalidRecord", "Keyed", "Record", "read_input"]

#: Longest CSV cell read (characters); longer documents are refused at validation anyway.
CSV_FIELD_LIMIT = 2**31 - 1
_UNDECODED = re.compile("[\udc80-\udcff]")


def _decode(raw: bytes, where: str) -> str | InvalidRecord:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidRecord(
            f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "re-encode the file as UTF-8"
        )


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM
            yield number, raw


def read_txt(path: Path) -> Iterator[Record]:
    for number, raw in _lines(path):
        if not raw.strip():
            continue  # blank lines separate nothing in a one-document-per-line file
        text = _decode(raw, f"{path.name} line {number}")
        yield text if isinstance(text, InvalidRecord) else {"text": text}


def read_jsonl(path: Path, *, text_column: str | None = None, key_column: str | None = None) -> Iterator[Record]:
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        where = f"{path.name} line {number}"
        obj = _json_object(raw, where)
        if isinstance(obj, InvalidRecord):
            yield obj
        else:
            yield keyed_record(obj, where, text_column=text_column, key_column=key_column)


def _json_object(raw: bytes, where: str) -> dict[str, Any] | InvalidRecord:
    text = _decode(raw, where)
    if isinstance(text, InvalidRecord):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return InvalidRecord(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
    except ValueError as exc:  # an integer of more than 4300 digits
        return InvalidRecord(f"{where}: cannot be read ({exc})")
    except RecursionError:
        return InvalidRecord(f"{where}: nested too deeply to read")
    if not isinstance(obj, dict):
        return InvalidRecord(f'{where}: expected a JSON object like {{"text": ...}}, got {type(obj).__name__}')
    return obj


def read_csv(path: Path, *, text_column: str | None = None, key_column: str | None = None) -> Iterator[Record]:
    """A CSV file's rows (a header row first), read a line at a time: a large file is never in memory whole."""
    # A cell holds a whole document: lift the csv module's 128 KiB cell limit (a process-wide
    # setting), so that documents are bounded by SLUICE_MAX_ITEM_CHARS at validation instead.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(_csv_lines(path))
    try:
        if not reader.fieldnames:
            return
        check_columns(reader.fieldnames, path.name, text_column=text_column, key_column=key_column)
        for row in reader:
            fields = {k: v for k, v in row.items() if k is not None and v is not None}
            where = f"{path.name} line {reader.line_num}"
            yield keyed_record(fields, where, text_column=text_column, key_column=key_column)
    except csv.Error as exc:
        raise ValidationError(f"{path.name} line {reader.line_num}: not valid CSV ({exc})") from None


def _csv_lines(path: Path) -> Iterator[str]:
    """The file's lines, endings kept (the csv module joins a quoted cell's lines itself; ``\\r``,
    ``\\n`` and ``\\r\\n`` all end one), decoded as they are read. A byte that is not UTF-8 stops the
    read with its line: in a CSV one bad line may be the middle of a cell, not an item of its own."""
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            bad = _UNDECODED.search(line)  # surrogateescape keeps each bad byte as U+DC80..U+DCFF
            if bad is not None:
                raise ValidationError(
                    f"{path.name} line {number}: not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at "
                    f"column {bad.start() + 1}); re-encode the file as UTF-8"
                )
            yield line


def read_parquet(path: Path, *, text_column: str | None = None, key_column: str | None = None) -> Iterator[Record]:
    """A Parquet file's rows, read in record batches (never the whole file in memory); columns
    become fields as in CSV. The columns are checked before any row is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering reads far ahead: ~the whole file
    except (pa.ArrowException, OSError) as exc:
        raise ValidationError(f"{path.name} is not a readable Parquet file ({exc})") from None
    check_columns(source.schema_arrow.names, path.name, text_column=text_column, key_column=key_column)
    batches = source.iter_batches(batch_size=BATCH_ROWS)
    return batch_records(batches, path.name, text_column=text_column, key_column=key_column)


#: File extensions read as images in a directory input (``image`` field); other files are text.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
#: Largest file read as one text item from a directory; larger ones fail alone, unread (a document
#: that long is over ``SLUICE_MAX_ITEM_CHARS``'s default anyway).
MAX_FILE_BYTES = 64 * 2**20


def read_directory(path: Path) -> Iterator[Record]:
    """One item per file under ``path`` (subdirectories too), in sorted path order, hidden files
    and directories skipped: images (by extension) as ``{"image": absolute path}``, other files
    as ``{"text": contents}``; each keyed by its path inside ``path`` (``/``-separated)."""
    for file in _files(path):
        rel = file.relative_to(path).as_posix()
        if file.suffix.lower() in IMAGE_EXTENSIONS:
            yield Keyed(rel, {"image": str(file.resolve())})
        else:
            yield Keyed(rel, _text_file(file, rel))


def _files(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory`` in sorted order, depth first; hidden names skipped,
    symbolic links to directories not followed (no loops)."""
    with os.scandir(directory) as scan:
        entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _text_file(file: Path, rel: str) -> dict[str, Any] | InvalidRecord:
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        return InvalidRecord(f"{rel}: {size:,} bytes, over {MAX_FILE_BYTES:,} for one text item; split it")
    text = _decode(file.read_bytes().removeprefix(b"\xef\xbb\xbf"), rel)
    if isinstance(text, InvalidRecord):
        images = ", ".join(sorted(IMAGE_EXTENSIONS))
        return InvalidRecord(f"{text.error}, or if it is an image give it an image extension ({images})")
    return {"text": text}


READERS = {
    ".jsonl": read_jsonl, ".ndjson": read_jsonl, ".csv": read_csv, ".txt": read_txt, ".parquet": read_parquet,
    ".pq": read_parquet,
}  # fmt: skip
#: Readers whose rows have named columns, to which ``text_column`` and ``key_column`` apply.
COLUMNAR = (read_jsonl, read_csv, read_parquet)


def read_input(path: Path, *, text_column: str | None = None, key_column: str | None = None) -> Iterator[Record]:
    """Records of an input file (chosen by extension) or directory.

    ``text_column`` names the field read as ``text``, ``key_column`` the field kept as the item's
    key (default: a ``key`` field, where there is one); both for JSONL, CSV and Parquet only.
    """
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"input file {path} does not exist")
    columns = {"--text-column": text_column, "--key-column": key_column}
    given = [flag for flag, value in columns.items() if value is not None]
    flags = f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply"
    if path.is_dir():
        if given:
            raise ValidationError(f"{flags} to a directory (each file is one item, keyed by its path)")
        return read_directory(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValidationError(
            f"input file {path}: unsupported extension {path.suffix!r}; use one of {', '.join(READERS)}, or a directory"
        )
    if reader not in COLUMNAR:
        if given:
            raise ValidationError(
                f"{flags} to {path.suffix} input (one document per line, no columns); use .jsonl, .csv or .parquet"
            )
        return reader(path)
    return reader(path, text_column=text_column, key_column=key_column)
