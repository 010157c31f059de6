"""Job, item, chunk and worker states, stored in the database as their string values."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # every item ended; some may have failed (see counts)
    FAILED = "failed"  # every item failed
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ItemStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ChunkStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class WorkerStatus(StrEnum):
    STARTING = "starting"  # loading its preloaded models
    RUNNING = "running"
    STOPPED = "stopped"  # exited cleanly; a crashed worker keeps its last status and goes stale


class DeliveryStatus(StrEnum):
    """A job callback's delivery (``webhook_deliveries.status``)."""

    PENDING = "pending"  # due at next_attempt_at (or being posted, under a claim)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt failed, or the URL is no longer allowed
