"""Request and response bodies, as pydantic models, so ``/openapi.json`` documents every route.

The OpenAI models follow the ``openai`` SDK's types field for field (``types/file_object.py``,
``types/batch.py``, ``types/batch_request_counts.py``, ``types/batch_error.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# native ------------------------------------------------------------------------------------


class JobSubmit(BaseModel):
    """A job as JSON: items are strings (a document's text) or objects of the fields the task needs."""

    model: str = Field(description="A registered model (GET /models).")
    items: list[str | dict[str, Any]] = Field(description="The items, in order; results keep this order.")
    params: dict[str, Any] | None = Field(None, description="Job-level options; an item's own fields override them.")
    priority: int = Field(0, description="0-9, 9 the most urgent.")
    callback_url: str | None = Field(
        None, description="POST the job's signed summary here when it ends (a host on SLUICE_WEBHOOK_ALLOWED_HOSTS)."
    )


class JobOut(BaseModel):
    id: str
    model: str
    task: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    priority: int
    total: int
    done: int
    failed: int
    pending: int
    progress: float = Field(description="Finished items / total, 0 to 1.")
    items_per_s: float | None
    elapsed_s: float | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    waiting_reason: str | None = Field(None, description="Why its queued chunks are not being picked up, if so.")
    counts: dict[str, int] | None = Field(None, description="Items per status, counted from the item rows.")
    warning: str | None = Field(None, description="Set when the job is stored but could not be sent yet.")


class JobList(BaseModel):
    data: list[JobOut]
    has_more: bool
    last_id: str | None


class Cancelled(BaseModel):
    id: str
    cancelled: bool = Field(description="False when the job had already ended.")
    status: str


class ModelOut(BaseModel):
    name: str
    task: str
    max_length: int | None


class ModelList(BaseModel):
    data: list[ModelOut]


class WorkerOut(BaseModel):
    hostname: str
    pid: int
    device: str
    status: str
    live: bool
    queues: list[str]
    models: list[dict[str, Any]]
    memory_budget: int | None
    heartbeat_age_s: float


class WorkerList(BaseModel):
    data: list[WorkerOut]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


# OpenAI ------------------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorDetail


#: the error answers of the OpenAI routes (OpenAI's shape; bad input is 400, not 422)
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {"4XX": {"model": OpenAIErrorOut, "description": "An error"}}


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchCreate(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchOut(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]  # fmt: skip
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sluice"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
