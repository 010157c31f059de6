"""Database engine and sessions. The database is the source of truth; Redis only dispatches.

The tables are defined in :mod:`sluice.schema` and re-exported here, so ``sluice.db`` stays the
one import for the schema and the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from sluice.errors import DatabaseUnavailableError
from sluice.schema import *  # noqa: F403  (the tables, re-exported)
from sluice.schema import __all__ as _schema_names

__all__ = [*_schema_names, "get_engine", "session_scope"]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the producer's progress polling read while a worker writes; busy_timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _transient(ctx: ExceptionContext) -> bool:
    """Whether a database error means "unreachable for now" rather than a bug or bad data."""
    if ctx.is_pre_ping:  # the pool is testing a connection: it reconnects by itself
        return False
    if ctx.is_disconnect:
        return True
    if not isinstance(ctx.sqlalchemy_exception, OperationalError | InterfaceError):
        return False
    orig = ctx.original_exception
    state = getattr(orig, "sqlstate", None)
    if ctx.dialect.name == "postgresql":
        # Class 08 connection exception, 57P operator intervention (shutdown), 53 insufficient
        # resources; no SQLSTATE at all: the connection itself failed (refused, reset).
        return state is None or state.startswith(("08", "57P", "53"))
    return any(word in str(orig) for word in ("locked", "busy", "unable to open", "disk I/O"))


def _translate_errors(ctx: ExceptionContext) -> None:
    if _transient(ctx):
        where = ctx.engine.url.render_as_string(hide_password=True) if ctx.engine else ctx.dialect.name
        first = str(ctx.original_exception).strip().splitlines()[0] if str(ctx.original_exception).strip() else ""
        raise DatabaseUnavailableError(
            f"the database at {where} is unreachable ({type(ctx.original_exception).__name__}: {first}); "
            "check that it is running and SLUICE_DATABASE_URL points at it"
        ) from ctx.original_exception


@cache
def get_engine(url: str) -> Engine:
    """One engine per URL per process. Errors that mean "the database is unreachable for now"
    surface as :class:`DatabaseUnavailableError`, so callers above the ledger can retry or say so
    in one line without knowing SQLAlchemy."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    event.listen(engine, "handle_error", _translate_errors)
    return engine


@cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
