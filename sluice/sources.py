"""Read items from a user's own SQL database (not Sluice's): ``sluice submit --sql QUERY
--source-url URL``, and the scheduler's SQL sources.

The query runs in a read-only transaction where the database has one (PostgreSQL), and its rows
are streamed (a server-side cursor on PostgreSQL, ``fetchmany`` elsewhere, ``batch_size`` rows at a
time), never the whole result in memory. Each row becomes an item by the same rule as a CSV row
(:func:`sluice.records.keyed_record`): ``key_column`` is its key, ``text_column`` its ``text``,
other columns its fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import NullPool, create_engine, make_url, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError

from sluice.errors import InfrastructureError, ValidationError
from sluice.records import InvalidRecord, Keyed, check_columns, keyed_record, plain_row

__all__ = ["InvalidRecord", "Keyed", "read_sql"]


def read_sql(
    url: str, query: str, params: dict[str, Any] | None = None, *, key_column: str | None = None,
    text_column: str | None = None, batch_size: int = 1000,
) -> Iterator[Keyed]:  # fmt: skip
    """Items from ``query`` (bound ``params``, e.g. ``{"since": datetime}`` for ``:since``) on the
    database at ``url``, streamed. Every row comes as a :class:`Keyed` (key None without a key
    column); a row that cannot be an item is a :class:`Keyed` around an :class:`InvalidRecord`.

    A bad URL, a missing driver, a missing SQLite file or a query the database refuses raise
    :class:`ValidationError` when the iterator starts; an unreachable database
    :class:`InfrastructureError`. The password in ``url`` never appears in a message.
    """
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
    parsed = _parse(url)
    return _rows(parsed, query, params or {}, key_column, text_column, batch_size)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValidationError(
            "the source URL cannot be parsed; give a SQLAlchemy URL such as postgresql://user@host/db "
            "or sqlite:///path/to/file.db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            # Connecting would create an empty database and report a missing table instead.
            raise ValidationError(f"the SQLite source {database or '(none)'!r} is not an existing database file")
    return parsed


def _rows(
    url: URL, query: str, params: dict[str, Any], key_column: str | None, text_column: str | None, batch_size: int
) -> Iterator[Keyed]:
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(url, poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ValidationError(f"the source URL {shown} cannot be used ({exc})") from None
    try:
        with _connect(engine, shown) as conn:
            try:
                result = conn.execution_options(yield_per=batch_size).execute(text(query), params)
            except DBAPIError as exc:
                raise _query_error(exc, shown) from None
            if not result.returns_rows:
                raise ValidationError(f"the query on {shown} returns no rows; give a SELECT")
            columns = list(result.keys())
            check_columns(columns, f"the query's result on {shown}", text_column=text_column, key_column=key_column)
            yield from _items(result, columns, key_column, text_column)
    finally:
        engine.dispose()


def _connect(engine: Any, shown: str) -> Connection:
    try:
        conn: Connection = engine.connect()
    except OperationalError as exc:
        raise InfrastructureError(f"cannot connect to the source database {shown}: {_first_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise ValidationError(f"cannot connect to the source database {shown}: {_first_line(exc)}") from None
    if engine.dialect.name == "postgresql":
        # Before the transaction begins: the user's query may read, never write.
        conn = conn.execution_options(postgresql_readonly=True)
    return conn


def _items(result: Any, columns: list[str], key_column: str | None, text_column: str | None) -> Iterator[Keyed]:
    for number, row in enumerate(result, start=1):
        record = keyed_record(plain_row(dict(zip(columns, row, strict=True))), f"query row {number}",
                              text_column=text_column, key_column=key_column)  # fmt: skip
        yield record if isinstance(record, Keyed) else Keyed(None, record)


def _query_error(exc: DBAPIError, shown: str) -> Exception:
    message = f"the query failed on {shown}: {_first_line(exc)}"
    if isinstance(exc, OperationalError) and getattr(exc, "connection_invalidated", False):
        return InfrastructureError(message)
    return ValidationError(message + "; check the SQL and its parameters")


def _first_line(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
