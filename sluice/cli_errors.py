"""How the command line reports a failure: one line saying what went wrong and how to check it,
and an exit code, whatever raised it (the core's errors, or a driver's that escaped translation).

Passwords in URLs are replaced by ``***`` in every message.
"""

from __future__ import annotations

import re
from typing import Any

from sluice.errors import InfrastructureError, SluiceError, ValidationError
from sluice.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


#: ``scheme://user:password@`` in any message: the password is replaced by ``***``.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@]+@")


def _redact(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1***@", text)


def _is(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is an instance of one of these classes, named ``module.Class`` (so that the
    command line need not import SQLAlchemy, kombu or redis to recognise their errors)."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in names for cls in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _database(settings: Settings | None) -> str:
    return settings.resolved_database_url if settings else "SLUICE_DATABASE_URL"


def _broker(settings: Settings | None) -> str:
    if settings is None:
        return "SLUICE_BROKER_URL"
    return _redact(settings.broker_url) if settings.broker_url else f"the private Redis under {settings.var_dir}"


def _database_error(exc: BaseException, settings: Settings | None) -> tuple[str, int]:
    """A SQLAlchemy error the core did not translate (``sluice db`` runs Alembic's own engine)."""
    where = _database(settings)
    orig = getattr(exc, "orig", None) or exc
    if not _is(exc, "sqlalchemy.exc.DBAPIError"):  # a bad URL, a missing driver
        return f"the database URL {where} cannot be used ({_first_line(exc)}); fix SLUICE_DATABASE_URL", EXIT_ERROR
    state = str(getattr(orig, "sqlstate", None) or "")
    lost = getattr(exc, "connection_invalidated", False) or (
        _is(exc, "sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError")
        and (
            (type(orig).__module__.startswith("psycopg") and (not state or state.startswith(("08", "57P", "53"))))
            or any(word in str(orig) for word in ("unable to open", "locked", "disk I/O"))
        )
    )
    if lost:
        return (
            f"the database at {where} is unreachable ({_first_line(orig)}); "
            "check that it is running and SLUICE_DATABASE_URL points at it"
        ), EXIT_UNREACHABLE
    hint = "; run `sluice db upgrade`" if "no such table" in str(orig) or state == "42P01" else ""
    return f"the database at {where} failed ({_first_line(orig)}){hint}", EXIT_ERROR


def describe_error(exc: BaseException, settings: Settings | None, debug: bool = False) -> tuple[str, int]:
    """The one-line message (multi-line only for a list of invalid items), passwords redacted,
    and exit code for an error; an unexpected one says how to see its traceback, unless ``debug``
    shows it already."""
    message, code = _describe(exc, settings, debug)
    return _redact(message), code


def _describe(exc: BaseException, settings: Settings | None, debug: bool) -> tuple[str, int]:
    if isinstance(exc, ValidationError):
        return str(exc), EXIT_INVALID
    if isinstance(exc, InfrastructureError):
        return str(exc), EXIT_UNREACHABLE
    if isinstance(exc, SluiceError):
        return str(exc), EXIT_ERROR
    if _is(exc, "pydantic_core._pydantic_core.ValidationError"):  # the settings
        errors: list[dict[str, Any]] = getattr(exc, "errors", list)()
        found = "; ".join(
            f"SLUICE_{'_'.join(map(str, e.get('loc', ()))).upper()}: {e.get('msg')}" for e in errors
        )  # fmt: skip
        return f"invalid settings: {found or _first_line(exc)}", EXIT_ERROR
    cause: BaseException | None = exc
    for _ in range(8):  # the error itself, or what it was raised from
        if cause is None:
            break
        if _is(cause, "sqlalchemy.exc.SQLAlchemyError"):
            return _database_error(cause, settings)
        if _is(cause, "kombu.exceptions.OperationalError", "redis.exceptions.ConnectionError",
               "redis.exceptions.TimeoutError", "redis.exceptions.BusyLoadingError"):  # fmt: skip
            return (
                f"the broker at {_broker(settings)} is unreachable ({_first_line(cause)}); "
                "check that Redis is running and SLUICE_BROKER_URL points at it"
            ), EXIT_UNREACHABLE
        if isinstance(cause, ConnectionError | TimeoutError):
            return (
                f"a connection failed ({_first_line(cause)}); check that the database "
                f"({_database(settings)}) and the broker ({_broker(settings)}) are reachable"
            ), EXIT_UNREACHABLE
        cause = cause.__cause__ or cause.__context__
    return f"unexpected {_first_line(exc)}" + ("" if debug else " (run with --debug for the traceback)"), EXIT_ERROR
