"""A batch's life, driven by whoever looks at it: no scheduler, no state outside the database.

* **validating**: :meth:`Batches.validate` (a background task of the request that created it)
  reads the input file from the database, checks every line, then stores the job (with the id
  reserved on the batch) and moves the batch to in_progress, or to failed with the bad lines.
* **in_progress -> finalizing -> completed**: any read (:meth:`Batches.refresh`) that finds the job
  ended takes the finalize lease and, after answering, measures the output and error files and
  records them. Past its completion window the job is cancelled and the batch finalizes as
  expired; a cancelled batch stays cancelling until no worker is still writing to its job.
* A replica that dies mid-validation or mid-finalization leaves a stale row: the next read after
  ``SLUICE_API_STALE_SECONDS`` fails the validation (or starts the batch if its job exists) or
  takes the finalize lease over.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sluice.api import batch_input as bi
from sluice.api.batch_output import measure
from sluice.api.context import Context
from sluice.api.errors import BadRequest, NotFound
from sluice.clock import as_utc, utcnow
from sluice.errors import InfrastructureError, SluiceError, UnknownModelError
from sluice.families import family_for
from sluice.ledger import TERMINAL, BatchInfo, FileInfo, JobInfo
from sluice.registry import load_registry

log = logging.getLogger("sluice.api")

#: batch validation errors kept (then one "too_many_errors" entry)
MAX_ERRORS = 100
WINDOWS = {"24h": timedelta(hours=24)}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


class Batches:
    """Create, validate, advance, finalize and cancel batches for one app's :class:`Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.settings = ctx.settings

    # create and validate -------------------------------------------------------------------
    def create(self, owner: str | None, file: FileInfo, endpoint: str, window: str,
               metadata: dict[str, str] | None) -> BatchInfo:  # fmt: skip
        """Store a new batch (validating), its job id reserved; :meth:`validate` runs next."""
        if endpoint not in bi.ENDPOINTS:
            raise BadRequest(f"endpoint must be one of {', '.join(bi.ENDPOINTS)}", param="endpoint")
        if window not in WINDOWS:
            raise BadRequest('completion_window must be "24h"', param="completion_window")
        if file.purpose != "batch":
            raise BadRequest(f"file {file.id} has purpose {file.purpose!r}; upload it with purpose \"batch\"",
                             param="input_file_id")  # fmt: skip
        now = utcnow()
        return self.ledger.create_batch({
            "id": new_id("batch_"), "owner": owner, "endpoint": endpoint, "input_file_id": file.id,
            "completion_window": window, "batch_metadata": metadata, "job_id": str(uuid.uuid4()),
            "created_at": now, "expires_at": now + WINDOWS[window],
        })  # fmt: skip

    def validate(self, batch_id: str) -> None:
        """Check every line; store the job and start the batch, or fail it with the lines at fault."""
        batch = self.ledger.batch(batch_id)
        if batch is None or batch.status != "validating":
            return
        try:
            model, total, errors = self.check(batch)
            if errors or model is None:
                self.ledger.fail_batch(batch_id, errors)
                return
            self.ctx.client.submit(model, self.items(batch), owner=batch.owner, job_id=batch.job_id)
        except InfrastructureError:
            raise  # not the batch's fault: it stays validating, and is retried or failed once stale
        except SluiceError as exc:
            self.ledger.fail_batch(batch_id, [{"code": "invalid_batch", "message": str(exc), "line": None}])
            return
        if not self.ledger.start_batch(batch_id, model, total) and batch.job_id:
            self.ledger.cancel(batch.job_id)  # cancelled while validating: its job must not run

    def _lines(self, batch: BatchInfo) -> Any:
        longest = 4 * self.settings.max_item_chars + 2**20
        return bi.lines(self.ledger.file_parts(batch.input_file_id), longest)

    def check(self, batch: BatchInfo) -> tuple[str | None, int, list[dict[str, Any]]]:
        """(the model, request count, errors) of a batch's input file, read in constant memory
        (only the custom_ids seen so far are kept, at most SLUICE_API_MAX_FILE_LINES)."""
        from producer.validate import check_item

        seen: set[str] = set()
        model: str | None = None
        chosen: tuple[Any, Any] | None = None
        errors: list[dict[str, Any]] = []
        total = 0
        try:
            for number, raw in self._lines(batch):
                total += 1
                try:
                    req = bi.parse(number, raw, batch.endpoint, self.settings)
                    if req.custom_id in seen:
                        raise bi.LineProblem("duplicate_custom_id", f"custom_id {req.custom_id!r} is used twice",
                                             "custom_id")  # fmt: skip
                    seen.add(req.custom_id)
                    if chosen is None or req.model != model:
                        chosen = self._model(req.model, batch.endpoint, model)
                        model = req.model
                    problem = check_item(chosen[1], chosen[0], {}, req.record, total - 1, self.settings)
                    if problem:
                        raise bi.LineProblem("invalid_request", bi.item_problem(problem))
                except bi.LineProblem as p:
                    errors.append({"code": p.code, "message": p.message, "param": p.param, "line": number})
                    if len(errors) >= MAX_ERRORS:
                        errors.append({"code": "too_many_errors", "message": f"stopped after {MAX_ERRORS} errors"})
                        break
        except bi.LineProblem as p:
            errors.append({"code": p.code, "message": p.message, "param": p.param, "line": None})
        if total == 0:
            errors.append({"code": "empty_file", "message": "the input file has no request lines", "line": None})
        return model, total, errors

    def _model(self, name: str, endpoint: str, first: str | None) -> tuple[Any, Any]:
        """(spec, family) of a line's model; it must be registered, fit the endpoint, and be the
        model of every other line (a batch is one job)."""
        if first is not None and name != first:
            raise bi.LineProblem("mismatched_model", f"every line must use one model; line uses {name!r}, "
                                 f"earlier lines {first!r}", "body.model")  # fmt: skip
        try:
            spec = load_registry(self.settings.models_file).get(name)
        except UnknownModelError as exc:
            raise bi.LineProblem("model_not_found", str(exc), "body.model") from None
        if spec.task != bi.ENDPOINTS[endpoint]:
            raise bi.LineProblem("invalid_model", f"model {name!r} is a {spec.task} model; {endpoint} needs a "
                                 f"{bi.ENDPOINTS[endpoint]} model", "body.model")  # fmt: skip
        return spec, family_for(spec.task)

    def items(self, batch: BatchInfo) -> Any:
        """The batch's items for the job, keyed by custom_id (a second pass over the file)."""
        from producer.inputs import Keyed

        for number, raw in self._lines(batch):
            req = bi.parse(number, raw, batch.endpoint, self.settings)
            yield Keyed(req.custom_id, req.record)

    # advance and finalize ------------------------------------------------------------------
    def refresh(self, batch: BatchInfo) -> tuple[BatchInfo, str | None]:
        """Move the batch on as far as its job allows; (the batch as it now is, a finalize lease
        the caller must run :meth:`finalize` with, after answering, or None)."""
        stale_before = utcnow() - timedelta(seconds=self.settings.api_stale_seconds)
        if batch.status == "validating" and as_utc(batch.created_at) < stale_before:
            self._stalled(batch, stale_before)
            return self.ledger.batch(batch.id) or batch, None
        if batch.status not in ("in_progress", "cancelling", "finalizing") or not batch.job_id:
            return batch, None
        stale = batch.finalize_lease_at is not None and as_utc(batch.finalize_lease_at) < stale_before
        if batch.outcome is not None and not stale:
            return batch, None  # being finalized
        outcome = batch.outcome or self._due(batch, self.ledger.job(batch.job_id))
        if not outcome:
            return batch, None
        lease = str(uuid.uuid4())
        claimed = self.ledger.claim_finalize(batch, outcome, lease, stale_before)
        return self.ledger.batch(batch.id) or batch, lease if claimed else None

    def _stalled(self, batch: BatchInfo, stale_before: Any) -> None:
        """A validation whose process died: start the batch if its job got stored, else fail it."""
        job = self.ledger.job(batch.job_id) if batch.job_id else None
        if job is not None and batch.model is None:
            self.ledger.start_batch(batch.id, job.model, job.total)
        else:
            error = {
                "code": "validation_interrupted",
                "line": None,
                "message": "validation stopped before it finished (the API process ended); create the batch again",
            }
            self.ledger.fail_batch(batch.id, [error], created_before=stale_before)

    def _due(self, batch: BatchInfo, job: JobInfo | None) -> str | None:
        """The terminal status the batch is ready to finalize towards now, or None."""
        expired = utcnow() >= as_utc(batch.expires_at)
        if job is None:
            return "cancelled"
        if batch.status == "in_progress" and job.status.value in ("completed", "failed"):
            return "completed"
        if expired and not job.status.terminal:
            self.ledger.cancel(job.id)
        if batch.status == "cancelling" or job.status.value == "cancelled" or expired:
            if self.ledger.job_draining(job.id):
                return None  # a worker may still write results: wait for it
            return "cancelled" if batch.status == "cancelling" or not expired else "expired"
        return None

    def finalize(self, batch_id: str, lease: str) -> None:
        """Measure the output and error files and record them with the final counts (a background task)."""
        batch = self.ledger.batch(batch_id)
        if batch is None or batch.finalize_lease != lease:
            return
        try:
            made = []
            sizes = {kind: measure(self.ledger, batch, kind) for kind in ("output", "error")}
            for kind, (size, lines) in sizes.items():
                if lines:
                    name = f"{batch.id}_{kind}.jsonl"
                    made.append(FileInfo(id=new_id("file-"), owner=batch.owner, purpose="batch_output", filename=name,
                                         bytes=size, lines=lines, status="processed", created_at=utcnow(),
                                         batch_id=batch.id, kind=kind))  # fmt: skip
            total = sizes["output"][1] + sizes["error"][1]
            self.ledger.finish_batch(batch_id, lease, (total, sizes["output"][1], sizes["error"][1]), made)
        except Exception:
            log.exception("finalizing batch %s failed; another read will retry it once the lease is stale", batch_id)

    # cancel --------------------------------------------------------------------------------
    def cancel(self, batch: BatchInfo) -> None:
        """validating -> cancelled, in_progress -> cancelling; refused once it is ending or ended."""
        if batch.status in TERMINAL or batch.status in ("cancelling", "finalizing"):
            if batch.status in ("cancelling", "cancelled"):
                return
            raise BadRequest(f"batch {batch.id} is {batch.status} and can no longer be cancelled")
        if not self.ledger.cancel_batch(batch.id):
            current = self.ledger.batch(batch.id)
            if current is None:
                raise NotFound(f"no batch {batch.id!r}")
            if current.status not in ("cancelling", "cancelled"):
                raise BadRequest(f"batch {batch.id} is {current.status} and can no longer be cancelled")
