"""Sluice's tables, as SQLAlchemy models, and their Core ``Table`` handles for the ledger.

Scores are real columns (``label``, ``score``) so that users can query them with SQL; the full
task-specific result is JSON in ``output``; embeddings are float32 bytes in ``embedding``; binary
results (artifacts) live in their own table, out of the hot item queries. Migrations
(``migrations/versions``) must agree with these models (``tests/integration/test_migrations.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sluice.clock import utcnow
from sluice.status import ChunkStatus, ItemStatus, JobStatus

__all__ = [
    "ARTIFACT_NAME_CHARS",
    "CALLBACK_URL_CHARS",
    "KEY_CHARS",
    "LABEL_CHARS",
    "ApiKey",
    "Artifact",
    "Base",
    "Batch",
    "Chunk",
    "File",
    "FilePart",
    "Item",
    "Job",
    "ScheduleState",
    "ScheduleTick",
    "SchedulerLease",
    "WebhookDelivery",
    "Worker",
    "api_keys_table",
    "artifacts_table",
    "batches_table",
    "chunks_table",
    "file_parts_table",
    "files_table",
    "items_table",
    "jobs_table",
    "schedule_ticks_table",
    "scheduler_leases_table",
    "schedules_table",
    "webhook_deliveries_table",
    "workers_table",
]  # fmt: skip

#: Longest ``callback_url`` accepted (and stored).
CALLBACK_URL_CHARS = 2048


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
    #: where to POST the job's summary when it ends (a host on SLUICE_WEBHOOK_ALLOWED_HOSTS);
    #: the ending transaction writes its ``webhook_deliveries`` row
    callback_url: Mapped[str | None] = mapped_column(String(CALLBACK_URL_CHARS))

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


#: Width of ``artifacts.name`` (a mask's label); longer names are cut by the ledger.
ARTIFACT_NAME_CHARS = 255


class Artifact(Base):
    """A binary result of an item (a depth map, a mask, a waveform), written in the transaction
    that writes the item's row, and only when that write happened (a redelivered chunk adds none).

    Kept out of ``items`` so that result pages and every hot query over items never read the
    bytes; a results page asks only for their media type and size, in one query per page.
    """

    __tablename__ = "artifacts"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    item: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the artifact's position among its item's artifacts (0, 1, ...)
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_type: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(ARTIFACT_NAME_CHARS))
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (ForeignKeyConstraint(["job_id", "item"], ["items.job_id", "items.item"], ondelete="CASCADE"),)


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


class WebhookDelivery(Base):
    """The outbox of a job's callback: written in the transaction that ends the job, so a crash
    never loses one; deliverers claim a due row (``next_attempt_at`` moved past the POST's time,
    ``attempts`` counted) before they POST, and record each outcome on it."""

    __tablename__ = "webhook_deliveries"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(CALLBACK_URL_CHARS))
    #: ``pending`` (due at ``next_attempt_at``), ``delivered`` or ``failed`` (attempts used up)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)


# The tables as Core ``Table`` objects (``Model.__table__`` is typed as a bare FromClause), for
# the ledger's statements.
jobs_table = cast(Table, Job.__table__)
chunks_table = cast(Table, Chunk.__table__)
items_table = cast(Table, Item.__table__)
artifacts_table = cast(Table, Artifact.__table__)
workers_table = cast(Table, Worker.__table__)
api_keys_table = cast(Table, ApiKey.__table__)
files_table = cast(Table, File.__table__)
file_parts_table = cast(Table, FilePart.__table__)
batches_table = cast(Table, Batch.__table__)
webhook_deliveries_table = cast(Table, WebhookDelivery.__table__)


# Schedules (sluice/schedules/, sluice/ledger/schedules.py) --------------------------------------
class ScheduleTick(Base):
    """One fire time of a schedule and what became of it; the primary key makes a tick happen at
    most once, whichever scheduler (or ``sluice schedules run``) claims it first.

    ``outcome``: ``claimed`` (being submitted; a crash here is resumed with the same job id),
    ``buffered`` (waits for the running one, overlap ``buffer_one``), then ``started`` (``job_id``),
    ``skipped`` / ``missed`` / ``failed`` with ``reason``. The sink step, once the job ended:
    ``sink_status`` ``pending`` (due at ``sink_next_at``), ``running``, ``done``, ``failed``,
    ``skipped`` (the job did not complete) or ``none`` (no sink).
    """

    __tablename__ = "schedule_ticks"

    schedule: Mapped[str] = mapped_column(String(128), primary_key=True)
    scheduled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    #: ``cron`` (a fire time) or ``manual`` (``sluice schedules run``)
    trigger: Mapped[str] = mapped_column(String(8))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(36))
    #: the ``:since`` bound the run's SQL source was read with
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: the job's terminal status, copied when the scheduler sees it end
    job_status: Mapped[str | None] = mapped_column(String(16))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sink_status: Mapped[str | None] = mapped_column(String(16))
    sink_attempts: Mapped[int] = mapped_column(Integer, default=0)
    sink_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sink_target: Mapped[str | None] = mapped_column(Text)
    sink_rows: Mapped[int | None] = mapped_column(Integer)
    sink_error: Mapped[str | None] = mapped_column(Text)
    sink_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_schedule_ticks_outcome", "outcome", "ended_at"),
        Index("ix_schedule_ticks_sink", "sink_status"),
    )


class ScheduleState(Base):
    """What the schedules file does not hold: whether a schedule is paused, and since when the
    scheduler knows it (its first fire time is after that: a new schedule never catches up)."""

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: fire times up to this one (the pause) are neither run nor recorded
    resumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SchedulerLease(Base):
    """The lock that makes one ``sluice scheduler`` of many the active one: held by ``holder``
    until ``expires_at``, renewed every second or so, taken over by another once expired."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


schedule_ticks_table = cast(Table, ScheduleTick.__table__)
schedules_table = cast(Table, ScheduleState.__table__)
scheduler_leases_table = cast(Table, SchedulerLease.__table__)
