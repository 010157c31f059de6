"""Input records as every source yields them, and the one rule for a record's key and text column.

Readers (files in :mod:`producer.inputs`, a user's SQL database in :mod:`sluice.sources`, Arrow
tables and DataFrames given to the Python client) all turn a row of named fields into an item the
same way (:func:`keyed_record`):

- the key column (``--key-column``, default ``key``) becomes the item's key, stored as
  ``items.key`` and returned with its result, and is removed from the fields the model sees; a
  number is stored as its string form (``7``, ``1.5``, ``true``), an object or list is an error;
- the text column (``--text-column``), when given, becomes the ``text`` field;
- other columns stay item fields; database and Arrow values JSON lacks (dates, decimals, UUIDs)
  become their usual text or number form.

Lives in the core (not in ``producer``) because :mod:`sluice.sources` yields these types too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sluice.db import KEY_CHARS
from sluice.errors import ValidationError

#: The field that carries an item's key when no ``--key-column`` names another.
DEFAULT_KEY = "key"
#: The field a ``--text-column`` becomes.
TEXT = "text"
#: Rows per Arrow record batch read from a Parquet file or a table.
BATCH_ROWS = 1000

#: Deepest nesting :func:`plain` converts (validation refuses deeper values anyway).
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class InvalidRecord:
    """An input position that could not be parsed."""

    error: str


@dataclass(frozen=True)
class Keyed:
    """An item with the caller's key for it (stored as ``items.key`` and returned with its result),
    e.g. an OpenAI batch line's ``custom_id`` or a ``--key-column`` value."""

    key: str | None
    record: str | dict[str, Any] | InvalidRecord


Record = dict[str, Any] | InvalidRecord | Keyed


def key_text(value: Any) -> tuple[str | None, str | None]:
    """``(key, None)``: ``value`` as a stored key (None stays None), or ``(None, why)`` it cannot be one."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        key = "true" if value else "false"
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None, f"is {value}; a key must be a string or a finite number"
        key = json.dumps(value)
    elif isinstance(value, str):
        key = value
    elif isinstance(value, dict | list | tuple):
        kind = "an object" if isinstance(value, dict) else "a list"
        return None, f"is {kind}; a key must be a string or a number"
    elif isinstance(value, datetime | date | time | Decimal | UUID):
        key = plain(value)
    else:
        return None, f"is a {type(value).__name__}; a key must be a string or a number"
    if len(key) > KEY_CHARS:
        return None, f"has {len(key):,} characters, over the limit of {KEY_CHARS}"
    if _SURROGATE.search(key):
        return None, "has a lone surrogate character (not valid Unicode)"
    return key, None


def plain(value: Any, depth: int = 0) -> Any:
    """A database or Arrow value as JSON can hold it: ISO text for dates and times, a number for
    a decimal (an integer when whole), text for a UUID, seconds for a duration; lists and objects
    converted inside, to :data:`MAX_DEPTH` levels. Anything else is returned as is (validation
    names what JSON lacks)."""
    if depth > MAX_DEPTH:
        return value  # validation refuses it as too deep
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.is_finite() else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    return value


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A database or Arrow row's values as JSON can hold them (:func:`plain`)."""
    return {k: plain(v) for k, v in row.items()}


def check_columns(
    columns: Iterable[str], where: str, *, text_column: str | None = None, key_column: str | None = None
) -> None:
    """Refuse, naming the columns there are, a ``--text-column`` or ``--key-column`` that a source
    with a fixed set of columns (CSV header, Parquet schema, query result) lacks, or a text column
    beside a ``text`` column (which one would the model read?)."""
    names = list(columns)
    for flag, name in (("--text-column", text_column), ("--key-column", key_column)):
        if name is not None and name not in names:
            raise ValidationError(f"column {name!r} ({flag}) is not in {where} (columns: {', '.join(names)})")
    if text_column not in (None, TEXT) and TEXT in names and key_column != TEXT:
        raise ValidationError(
            f"{where} has a {TEXT!r} column and --text-column {text_column!r}; drop or rename one of them"
        )


def keyed_record(
    fields: dict[str, Any], where: str, *, text_column: str | None = None, key_column: str | None = None
) -> Record:
    """One row of named fields as an item (see the module docstring); ``where`` names the row in
    errors. A row without a key field stays a plain dict. Values are taken as they are (see
    :func:`plain_row` for a database's or Arrow's)."""
    fields = dict(fields)
    for flag, name in (("--text-column", text_column), ("--key-column", key_column)):
        if name is not None and name not in fields:
            return _missing(where, name, flag, fields)
    key_name = key_column or DEFAULT_KEY
    has_key = key_name in fields
    raw_key = fields.get(key_name)
    if has_key and key_name != text_column:  # the key is the item's, not a field the model reads
        del fields[key_name]
    if text_column not in (None, TEXT):
        if TEXT in fields:
            return InvalidRecord(
                f"{where}: has a {TEXT!r} field and --text-column {text_column!r}; drop or rename one of them"
            )
        fields[TEXT] = fields.pop(text_column)
    key, problem = key_text(raw_key)
    if problem:
        return InvalidRecord(f"{where}: key {key_name!r} {problem}")
    return Keyed(key, fields) if has_key else fields


def _missing(where: str, name: str, flag: str, fields: dict[str, Any]) -> InvalidRecord:
    listed = ", ".join(map(repr, list(fields)[:10])) + (", ..." if len(fields) > 10 else "")
    return InvalidRecord(f"{where}: no field {name!r} ({flag}); its fields are {listed or 'none'}")


def table_records(
    table: Any, where: str, *, text_column: str | None = None, key_column: str | None = None
) -> Iterator[Record]:
    """An Arrow table (or a pandas DataFrame, through Arrow) as items, batch by batch."""
    import pyarrow as pa

    if not isinstance(table, pa.Table | pa.RecordBatch):
        table = pa.Table.from_pandas(table, preserve_index=False)  # NaN becomes null
    check_columns(table.column_names, where, text_column=text_column, key_column=key_column)
    batches = table.to_batches(max_chunksize=BATCH_ROWS) if isinstance(table, pa.Table) else [table]
    return batch_records(batches, where, text_column=text_column, key_column=key_column)


def batch_records(
    batches: Iterable[Any], where: str, *, text_column: str | None = None, key_column: str | None = None
) -> Iterator[Record]:
    """Arrow record batches as items; rows are numbered from 1 in errors."""
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            where_row = f"{where} row {number}"
            yield keyed_record(plain_row(row), where_row, text_column=text_column, key_column=key_column)


def is_table(items: Any) -> bool:
    """Whether ``items`` is an Arrow table or record batch, or a pandas DataFrame (duck-typed, so
    neither library is imported to ask)."""
    arrow = hasattr(items, "to_batches") and hasattr(items, "column_names") and hasattr(items, "schema")
    pandas = hasattr(items, "itertuples") and hasattr(items, "columns") and hasattr(items, "dtypes")
    return arrow or pandas
