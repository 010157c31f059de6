"""Where a scheduled run's results go when its job ends: a file, or an upsert into a table.

Both are idempotent, so running a sink again (a retry, ``sluice schedules sink-retry``, two
schedulers during a takeover) leaves the same result: a file is written under a temporary name
and renamed (:func:`sluice.exports.write_results`); a table row is keyed by (``schedule``, ``key``)
and the newest run's result replaces it (``INSERT ... ON CONFLICT (schedule, key) DO UPDATE``).

The key is the item's own (a source's ``key_column``; a file source's ``file:position``), else its
input position. The key leaves out the job on purpose: an incremental source that reads a changed
row again updates its result in place instead of adding a second one, and several schedules can
share one table. Only items that succeeded are upserted, so a failed item never blanks a good result
from an earlier run. Columns: ``schedule``, ``key``, ``item``, ``job_id``, ``scheduled_at``,
``label``, ``score``, ``output`` (JSON), ``embedding`` and ``updated_at``; ``embedding`` is a
``real[]`` on PostgreSQL, pgvector's ``vector`` when that extension is installed in the database
when the sink creates the table, and JSON text on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import UserDefinedType

from sluice.clock import utcnow
from sluice.errors import SluiceError
from sluice.exports import write_results

#: Rows per upsert statement.
UPSERT_ROWS = 500
#: The columns a sink table must have, with a unique key on the first two.
KEY_COLUMNS = ("schedule", "key")


class SinkError(SluiceError):
    """A sink cannot write where it was told to (say what to change)."""


class Vector(UserDefinedType[list[float]]):
    """pgvector's ``vector``: bound as its text form ``[1,2,3]``, which PostgreSQL casts (the driver
    sends strings untyped), as pgvector's own SQLAlchemy type does."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: list[float] | None) -> str | None:
            return None if value is None else "[" + ",".join(repr(float(v)) for v in value) + "]"

        return process


def write_file(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write every result row to ``path`` (format by extension), creating its directory; rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_results(rows, path)


def upsert_table(
    url: str, name: str, rows: Iterable[dict[str, Any]], *, schedule: str, job_id: str, scheduled_at: datetime
) -> int:
    """Upsert the succeeded result rows into table ``name`` (created when missing); rows written."""
    engine = _engine(url)
    try:
        table = _table(engine, name)
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        embedding = table.c.get("embedding")
        as_json = embedding is not None and isinstance(embedding.type, Text | String)
        written = 0
        done = (r for r in rows if r.get("status") == "done")
        for batch in _batches(done):
            values = [_values(r, schedule, job_id, scheduled_at, as_json) for r in batch]
            values = [{k: v for k, v in row.items() if k in table.c} for row in values]
            statement = insert(table).values(values)
            updates = {c: statement.excluded[c] for c in values[0] if c not in KEY_COLUMNS}
            with engine.begin() as conn:
                conn.execute(statement.on_conflict_do_update(index_elements=list(KEY_COLUMNS), set_=updates))
            written += len(batch)
        return written
    finally:
        engine.dispose()


def check_table_target(url: str) -> None:
    """Connect to a table sink's database (``sluice schedules check``); raises what the driver says."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    if not url.startswith("postgresql"):
        raise SinkError(f"a table sink writes to PostgreSQL or SQLite; {url.split(':', 1)[0]!r} URLs are not supported")
    return create_engine(url)


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while batch := list(islice(it, UPSERT_ROWS)):
        yield batch


def _values(row: dict[str, Any], schedule: str, job_id: str, at: datetime, as_json: bool) -> dict[str, Any]:
    vector = row.get("embedding")
    return {
        "schedule": schedule, "key": str(row["key"]) if row.get("key") is not None else str(row["item"]),
        "item": row["item"], "job_id": job_id, "scheduled_at": at, "label": row.get("label"),
        "score": row.get("score"), "output": row.get("output"),
        "embedding": json.dumps(vector) if as_json and vector is not None else vector, "updated_at": utcnow(),
    }  # fmt: skip


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return schema or None, table


def _table(engine: Engine, name: str) -> Table:
    """The sink table: reflected when it exists (checked for its key), else created."""
    schema, table_name = _split(name)
    metadata = MetaData()
    if inspect(engine).has_table(table_name, schema=schema):
        table = Table(table_name, metadata, schema=schema, autoload_with=engine)
        missing = [c for c in KEY_COLUMNS if c not in table.c]
        if missing:
            raise SinkError(
                f"table {name} exists without column(s) {', '.join(missing)}; drop it (the sink creates it), or "
                "add schedule and key columns with a unique key on (schedule, key)"
            )
        if "embedding" in table.c and engine.dialect.name == "postgresql" and _is_vector(engine, schema, table_name):
            table.c.embedding.type = Vector()
        return table
    table = Table(
        table_name, metadata,
        Column("schedule", String(128), primary_key=True), Column("key", String(512), primary_key=True),
        Column("item", Integer), Column("job_id", String(36)), Column("scheduled_at", DateTime(timezone=True)),
        Column("label", Text), Column("score", Float), Column("output", JSON),
        Column("embedding", _embedding_type(engine)), Column("updated_at", DateTime(timezone=True)),
        schema=schema,
    )  # fmt: skip
    metadata.create_all(engine, checkfirst=True)
    return table


def _embedding_type(engine: Engine) -> Any:
    if engine.dialect.name != "postgresql":
        return Text()
    with engine.connect() as conn:
        has_vector = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first() is not None
    return Vector() if has_vector else postgresql.ARRAY(postgresql.REAL)


def _is_vector(engine: Engine, schema: str | None, table: str) -> bool:
    query = text(
        "SELECT udt_name FROM information_schema.columns WHERE table_name = :t AND column_name = 'embedding' "
        "AND table_schema = COALESCE(:s, current_schema())"
    )
    with engine.connect() as conn:
        return conn.execute(query, {"t": table, "s": schema}).scalar() == "vector"
