"""Read job input files: ``.jsonl`` (one object per line), ``.csv`` (header row), ``.txt`` (one
document per line).

Readers yield one record per input position. A line that cannot be read (bad UTF-8, bad JSON)
yields an :class:`InvalidRecord` that says where and why, so validation can report it with the
others, or store it as a failed item, instead of silently dropping or shifting positions.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.errors import ValidationError


@dataclass(frozen=True)
class InvalidRecord:
    """An input position that could not be parsed."""

    error: str


Record = dict[str, Any] | InvalidRecord


@dataclass(frozen=True)
class Keyed:
    """An item with the caller's key for it (stored as ``items.key`` and returned with its result),
    e.g. an OpenAI batch line's ``custom_id``."""

    key: str | None
    record: str | dict[str, Any] | InvalidRecord


#: Longest CSV cell read (characters); longer documents are refused at validation anyway.
CSV_FIELD_LIMIT = 2**31 - 1


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


def read_jsonl(path: Path) -> Iterator[Record]:
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        where = f"{path.name} line {number}"
        text = _decode(raw, where)
        if isinstance(text, InvalidRecord):
            yield text
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield InvalidRecord(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValueError as exc:  # an integer of more than 4300 digits
            yield InvalidRecord(f"{where}: cannot be read ({exc})")
            continue
        except RecursionError:
            yield InvalidRecord(f"{where}: nested too deeply to read")
            continue
        if not isinstance(obj, dict):
            yield InvalidRecord(f'{where}: expected a JSON object like {{"text": ...}}, got {type(obj).__name__}')
            continue
        yield obj


def read_csv(path: Path) -> Iterator[Record]:
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    text = _decode(raw, path.name)
    if isinstance(text, InvalidRecord):
        raise ValidationError(text.error)
    # A cell holds a whole document: lift the csv module's 128 KiB cell limit (a process-wide
    # setting), so that documents are bounded by SLUICE_MAX_ITEM_CHARS at validation instead.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames:
            return
        for row in reader:
            yield {k: v for k, v in row.items() if k is not None and v is not None}
    except csv.Error as exc:
        raise ValidationError(f"{path.name} line {reader.line_num}: not valid CSV ({exc})") from None


READERS = {".jsonl": read_jsonl, ".ndjson": read_jsonl, ".csv": read_csv, ".txt": read_txt}


def read_input(path: Path) -> Iterator[Record]:
    """Records of an input file, chosen by extension."""
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"input file {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValidationError(
            f"input file {path}: unsupported extension {path.suffix!r}; use one of {', '.join(READERS)}"
        )
    return reader(path)
