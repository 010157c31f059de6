"""Database schema and engine. The database is the source of truth; Redis only dispatches.

Scores are real columns (``label``, ``score``) so that users can query them with SQL; the full
task-specific result is JSON in ``output``; embeddings are float32 bytes in ``embedding``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sluice.clock import utcnow
from sluice.errors import DatabaseUnavailableError
from sluice.status import ChunkStatus, ItemStatus, JobStatus


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    done_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: who submitted it through the HTTP API (an API key's owner); None from the CLI, the Python
    #: client or an API running with --no-auth. Another owner's key never sees the job.
    owner: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_jobs_owner_status", "owner", "status"),)


class Chunk(Base):
    """A contiguous range of a job's items, the unit a Redis message refers to.

    ``lease`` is a token written when a worker claims the chunk; the worker closes the chunk only
    if it still holds that token, so a redelivered copy and the original never both finish it.
    """

    __tablename__ = "chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ChunkStatus.QUEUED.value)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    lease: Mapped[str | None] = mapped_column(String(36))
    leased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: the worker (Celery node name) holding the lease: a restarted or dead worker's chunks go back to the queue
    leased_by: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Redis queue its message was last sent to: a chunk on a queue no live worker consumes
    # is waiting for nobody, which `sluice status` reports and `sluice reconcile` re-routes.
    queue: Mapped[str | None] = mapped_column(String(255))
    #: split off a chunk whose run was lost: runs alone (never coalesced), so a poison item is
    #: bisected down to itself without taking other items or jobs with it
    isolated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_chunks_status", "status"),)


#: Width of ``items.label``; the store cuts longer labels (the full value is in ``output``), because
#: PostgreSQL would otherwise refuse the whole batch's write.
LABEL_CHARS = 256
#: Width of ``items.key`` (and of an OpenAI batch line's ``custom_id``).
KEY_CHARS = 512


class Item(Base):
    __tablename__ = "items"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the caller's id for the item (an OpenAI batch line's ``custom_id``), returned with its result
    key: Mapped[str | None] = mapped_column(String(KEY_CHARS))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(LABEL_CHARS))
    score: Mapped[float | None] = mapped_column(Float)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    compute_ms: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(128))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_items_job_status", "job_id", "status"),
        Index("ix_items_label", "job_id", "label"),
    )


class Worker(Base):
    """One worker process as it last reported itself: where it runs, what it consumes, what it holds.

    ``models`` lists the resident models (``model``, ``task``, ``device``, ``dtype``, ``bytes``,
    ``loaded_at``, ``last_used``, ``pinned``); ``evictions`` the most recent LRU evictions. The row
    is rewritten at start, after every load or eviction and on each heartbeat; producers route
    jobs by the queues of live rows (heartbeat younger than ~3 beats).
    """

    __tablename__ = "workers"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    queues: Mapped[list[str]] = mapped_column(JSON)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    evictions: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    memory_budget: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: ``host:port`` of its Prometheus /metrics endpoint (``SLUICE_METRICS_PORT``); None without one
    metrics: Mapped[str | None] = mapped_column(String(255))


class ApiKey(Base):
    """An HTTP API key: only its SHA-256 is stored. ``owner`` owns what the key creates; several
    keys (say a read-only and a submitting one) may share an owner."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    #: the key's first characters, to tell keys apart in listings without revealing them
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)


class File(Base):
    """A file of the OpenAI-style Files API. An uploaded file's bytes are in ``file_parts``; a
    batch's output or error file (``batch_id`` and ``kind`` set) has none: its content is
    generated from the batch job's items whenever it is read."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    #: ``uploading`` while its parts arrive (never listed or usable), then ``processed``
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)


class FilePart(Base):
    """One piece (about a MiB) of an uploaded file, so neither upload nor download holds a file in memory."""

    __tablename__ = "file_parts"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """An OpenAI-style batch: an uploaded request file run as one Sluice job (``job_id``).

    ``outcome`` is the terminal status it is finalizing towards; ``finalize_lease`` is held by the
    API process computing its output files' sizes (taken over when stale, like a chunk lease).
    """

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(36))
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    request_total: Mapped[int] = mapped_column(Integer, default=0)
    request_completed: Mapped[int] = mapped_column(Integer, default=0)
    request_failed: Mapped[int] = mapped_column(Integer, default=0)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    finalize_lease: Mapped[str | None] = mapped_column(String(36))
    finalize_lease_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_batches_owner_created", "owner", "created_at"),)


# The tables as Core ``Table`` objects (``Model.__table__`` is typed as a bare FromClause), for
# the ledger's statements.
jobs_table = cast(Table, Job.__table__)
chunks_table = cast(Table, Chunk.__table__)
items_table = cast(Table, Item.__table__)
workers_table = cast(Table, Worker.__table__)
api_keys_table = cast(Table, ApiKey.__table__)
files_table = cast(Table, File.__table__)
file_parts_table = cast(Table, FilePart.__table__)
batches_table = cast(Table, Batch.__table__)


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
