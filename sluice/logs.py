"""Logging for every Sluice process: human-readable lines or JSON, context fields, and redaction.

:func:`configure_logging` installs one handler on the root logger (replacing the one it
installed before, leaving any other alone). ``SLUICE_LOG_FORMAT=json`` makes it write one JSON
object per line: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exc`` (a
traceback, when there is one) and, where they apply, ``worker``, ``job``, ``chunk`` and ``model``.
The default stays a plain line, ``<time> <LEVEL> <logger>: <message>``.

Context: :func:`set_process_fields` sets fields for every record of the process (a worker's
name); :func:`log_context` adds fields for the records logged inside a ``with`` block on that
thread (the runtime sets ``job``, ``chunk`` and ``model`` around a chunk's run).

Redaction: every record passes :class:`RedactFilter`, whatever its format, which masks passwords
in URLs (``redis://user:***@host``), Sluice API keys (``sk-sluice-***``), bearer tokens, and the
literal secrets of the settings (URL passwords, the Sentinel password, Flower's credentials),
in the message, its arguments and its traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from sluice.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Context fields a JSON line carries when they are set.
CONTEXT_FIELDS = ("worker", "job", "chunk", "model")
#: ``scheme://user:password@``: the password is replaced by ``***`` (the CLI's errors use the same rule).
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@]+@")
API_KEY = re.compile(r"\bsk-sluice-[A-Za-z0-9_\-]+")
BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
MASK = "***"
#: Shorter literal secrets are not masked on their own (they would mask ordinary words).
MIN_SECRET_CHARS = 4

_context: ContextVar[dict[str, str] | None] = ContextVar("sluice_log_context", default=None)
_process_fields: dict[str, str] = {}


def set_process_fields(**fields: object) -> None:
    """Fields every record of this process carries (e.g. ``worker``); None removes one."""
    for key, value in fields.items():
        if value is None:
            _process_fields.pop(key, None)
        else:
            _process_fields[key] = str(value)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add fields (``job``, ``chunk``, ``model``) to the records logged in this block on this thread."""
    current = _context.get() or {}
    token = _context.set({**current, **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def context_fields() -> dict[str, str]:
    """The context fields in force here: the process's, then this block's."""
    return {**_process_fields, **(_context.get() or {})}


def settings_secrets(settings: Settings | None) -> list[str]:
    """The literal secrets of ``settings``: URL passwords, the Sentinel password, Flower's credentials,
    the webhook signing key."""
    if settings is None:
        return []
    found: list[str] = []
    for url in (settings.database_url or "", settings.broker_url or ""):
        for part in url.split(";"):
            password = _url_password(part)
            if password:
                found += [password, unquote(password)]
    for secret in (settings.broker_sentinel_password, settings.flower_basic_auth):
        if secret is not None:
            value = secret.get_secret_value()
            found.append(value)
            found += [pair.partition(":")[2] for pair in value.split(",")]
    if settings.webhook_secret is not None:  # the key that signs job callbacks
        found.append(settings.webhook_secret.get_secret_value())
    return sorted({s for s in found if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class FailureStreak:
    """Logs the first failure of a run of them and the first success after it, nothing in between:
    a loop that retries an unreachable database every second must not write a line per try."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.failing = False

    def failed(self, level: int, msg: str, *args: object) -> None:
        if not self.failing:
            self.logger.log(level, msg, *args)
        self.failing = True

    def succeeded(self, msg: str) -> None:
        if self.failing:
            self.logger.info(msg)
        self.failing = False


class Redactor:
    """Masks secrets in text: URL passwords, API keys, bearer tokens and the given literals."""

    def __init__(self, literals: list[str] | None = None) -> None:
        self.literals = sorted({s for s in literals or [] if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = URL_PASSWORD.sub(rf"\1{MASK}@", text)
        text = API_KEY.sub(f"sk-sluice-{MASK}", text)
        text = BEARER.sub(rf"\1{MASK}", text)
        for secret in self.literals:
            text = text.replace(secret, MASK)
        return text


class RedactFilter(logging.Filter):
    """Rewrites each record with its secrets masked: message (arguments merged in) and traceback."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redactor(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        record.exc_info = None  # formatted above: formatters print exc_text
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, context fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(context_fields())
        for key in CONTEXT_FIELDS:  # set per call with `extra={...}`
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (as logging's last-resort handler does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def make_handler(
    settings: Settings | None = None, fmt: str | None = None, text_format: str = TEXT_FORMAT
) -> logging.Handler:
    """A stderr handler in ``fmt`` (``text`` or ``json``; the settings' ``log_format`` when None) that redacts."""
    chosen = fmt or (settings.log_format if settings is not None else "text")
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(text_format))
    handler.addFilter(RedactFilter(Redactor(settings_secrets(settings))))
    handler._sluice = True  # type: ignore[attr-defined]  # recognised (and replaced) by configure_logging
    return handler


def configure_logging(
    settings: Settings | None = None, level: str | int = "INFO", fmt: str | None = None, text_format: str = TEXT_FORMAT,
    **fields: object,
) -> logging.Handler:  # fmt: skip
    """Install the process's root handler (replacing the one installed before) at ``level``;
    ``fields`` become process-wide context (``worker=...``)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sluice", False)]:
        root.removeHandler(old)
    handler = make_handler(settings, fmt, text_format)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.captureWarnings(True)  # Python warnings become records too: formatted and redacted alike
    set_process_fields(**fields)
    return handler
