"""The Python client: submit bulk jobs, follow their progress, read their results.

Validation happens here, before anything is written; storing (one transaction for the job, its
items and chunks, then the send) is the ledger's, sending the dispatcher's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from producer.inputs import InvalidRecord, Keyed
from producer.validate import (
    MAX_REPORTED,
    check_callback_url,
    check_item,
    check_params,
    normalise,
    rejection,
    stored_input,
)
from sluice.dispatch import Dispatcher
from sluice.errors import BrokerError, JobNotFoundError, ValidationError
from sluice.families import family_for
from sluice.families.base import TaskFamily
from sluice.ledger import JobInfo, Ledger, NewItem, NewJob, StoredArtifact
from sluice.records import is_table, key_text, keyed_record, table_records
from sluice.registry import ModelSpec, Registry, load_registry
from sluice.routing import WorkerRow, waiting_reason
from sluice.settings import Settings, get_settings

__all__ = ["Client", "JobInfo"]

log = logging.getLogger("sluice.producer")


class Client:
    """Submit and follow jobs. Settings come from the environment unless given."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.ledger = Ledger.for_settings(self.settings)
        self.dispatcher = Dispatcher(self.settings, self.ledger)
        #: jobs stored by :meth:`submit` whose messages could not be sent (broker unreachable), with
        #: why; they are sent when the broker is back, by the periodic ``sluice reconcile``
        self.unsent: dict[str, str] = {}

    @property
    def engine(self) -> Any:
        """The ledger's database engine (tests and benchmarks read tables through it)."""
        return self.ledger.engine

    @property
    def registry(self) -> Registry:
        return load_registry(self.settings.models_file)

    # submit ---------------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        items: Iterable[str | dict[str, Any] | InvalidRecord | Keyed],
        params: dict[str, Any] | None = None,
        priority: int = 0,
        skip_invalid: bool = False,
        *,
        owner: str | None = None,
        job_id: str | None = None,
        callback_url: str | None = None,
        text_column: str | None = None,
        key_column: str | None = None,
    ) -> str:
        """Validate, store and enqueue a job; return its id.

        ``items`` is an iterable of texts and field dicts, or an Arrow table or pandas DataFrame
        (read in batches; its columns are the fields). A dict's or row's ``key`` field (or
        ``key_column``) is kept as the item's key, not given to the model; ``text_column`` names
        the field read as ``text`` (:func:`sluice.records.keyed_record`).

        Invalid items reject the whole job with a message listing them, unless ``skip_invalid``,
        which stores them as failed items (with their error) so every input position is kept.
        An item wrapped in :class:`~producer.inputs.Keyed` keeps its key with its result; ``owner``
        is the API key owner submitting it; ``job_id`` fixes the new job's id (default: a new UUID).
        ``callback_url``: POST the job's signed summary there when it ends (README "Webhooks"; the
        host must be on ``SLUICE_WEBHOOK_ALLOWED_HOSTS`` and ``SLUICE_WEBHOOK_SECRET`` set).
        """
        params = check_params(params)
        callback_url = check_callback_url(callback_url, self.settings)
        if type(priority) is not int or not 0 <= priority <= 9:  # callers in Python may pass anything
            raise ValidationError(f"priority must be a whole number from 0 to 9 (9 is most urgent), got {priority!r}")
        if not isinstance(model, str):
            raise ValidationError(f"model must be a registered model's name, got {type(model).__name__}")
        if is_table(items):  # before the Iterable check: a DataFrame iterates over its column names
            items = table_records(items, f"the {type(items).__name__}", text_column=text_column, key_column=key_column)
        if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
            raise ValidationError(
                f"items must be a list (or other iterable) of strings or objects, got {type(items).__name__}"
            )
        spec = self.registry.get(model)
        family = family_for(spec.task)
        family.validate_params(params, spec)
        job = NewJob(job_id or str(uuid.uuid4()), spec.task, model, params, priority, self.settings.chunk_size, owner,
                     callback_url=callback_url)  # fmt: skip
        checked = self._checked(family, spec, params, items, skip_invalid, (text_column, key_column))
        self.ledger.create_job(job, checked, lambda chunks: self._send(job.id, chunks, priority, model))
        return job.id

    def _send(self, job_id: str, chunks: list[int], priority: int, model: str) -> str | None:
        """Send a stored job's chunks; when the broker is unreachable, keep the job (it is committed)
        and say so, rather than fail a submit whose retry would store the job twice."""
        try:
            return self.dispatcher.send(job_id, chunks, priority, model)
        except BrokerError as exc:
            self.unsent[job_id] = str(exc)
            log.warning(
                "job %s is stored but not yet sent: %s; it will be sent when the broker is back "
                "(the periodic `sluice reconcile --every` does it; or run `sluice reconcile`)", job_id, exc,
            )  # fmt: skip
            return None

    def _checked(
        self, family: type[TaskFamily], spec: ModelSpec, params: dict[str, Any],
        items: Iterable[str | dict[str, Any] | InvalidRecord | Keyed], skip_invalid: bool,
        columns: tuple[str | None, str | None] = (None, None),
    ) -> Iterator[NewItem]:  # fmt: skip
        """Items with their validation errors; after the first error without ``skip_invalid`` it
        keeps scanning (to report every problem) but yields nothing, then raises the rejection.
        ``columns``: the text and key columns of dict items."""
        errors: list[str] = []
        bad = 0
        text_column, key_column = columns
        for index, raw in enumerate(items):
            if isinstance(raw, dict):
                raw = keyed_record(raw, f"item {index}", text_column=text_column, key_column=key_column)
            key, key_problem = key_text(raw.key) if isinstance(raw, Keyed) else (None, None)
            record = normalise(raw.record if isinstance(raw, Keyed) else raw, index)
            error = f"item {index}: key {key_problem}" if key_problem else None
            error = error or check_item(family, spec, params, record, index, self.settings)
            if error:
                bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(error)
            if skip_invalid or not errors:
                stored = record if error is None and isinstance(record, dict) else None
                yield index, stored or stored_input(family, params, record, self.settings), error, key
        if bad and not skip_invalid:
            raise rejection(errors, bad)

    def enqueue(self, job_id: str, chunks: list[int], priority: int, model: str | None = None) -> str:
        """Send these chunks' messages (again) and record the queue; returns it."""
        return self.dispatcher.enqueue(job_id, chunks, priority, model)

    def workers(self) -> list[WorkerRow]:
        """Live workers: fresh heartbeat, not stopped."""
        return self.dispatcher.workers()

    # follow ---------------------------------------------------------------------------------
    def status(self, job_id: str, explain: bool = True) -> JobInfo:
        """The job's row; with ``explain``, also why its queued chunks may not be picked up
        (two more queries, which progress polling skips)."""
        info = self.ledger.job(job_id)
        if info is None:
            raise JobNotFoundError(f"no job {job_id!r}; `sluice jobs` lists recent ones")
        if explain and not info.status.terminal:
            info.waiting_reason = self._waiting_reason(job_id, info.model)
        return info

    def _waiting_reason(self, job_id: str, model: str) -> str | None:
        """Whether any live worker reads the queues this job's queued chunks were sent to."""
        queues = self.ledger.queued_chunk_queues(job_id)
        return waiting_reason(model, queues, self.workers(), self.settings.queue) if queues else None

    def item_counts(self, job_id: str) -> dict[str, int]:
        """Items per status, counted from the item rows themselves."""
        return self.ledger.item_counts(job_id)

    def wait(self, job_id: str, timeout: float | None = None, progress: bool = False, poll_s: float = 0.5) -> JobInfo:
        """Poll the database until the job ends; optionally draw a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        info = self.status(job_id, explain=False)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=info.total, unit="doc", desc=f"job {job_id[:8]}", smoothing=0.1)
        try:
            while True:
                if bar is not None:
                    bar.update(info.finished - bar.n)
                    bar.set_postfix(failed=info.failed, refresh=False)
                if info.status.terminal:
                    return info
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {info.status} after {timeout}s "
                                       f"({info.finished}/{info.total} items)")  # fmt: skip
                time.sleep(poll_s)
                info = self.status(job_id, explain=False)
        finally:
            if bar is not None:
                bar.close()

    def cancel(self, job_id: str) -> bool:
        """Mark a job cancelled; workers check before each batch. False if it had already ended."""
        self.status(job_id, explain=False)
        return self.ledger.cancel(job_id)

    def jobs(self, limit: int = 20) -> list[JobInfo]:
        """The most recent jobs, newest first."""
        return self.ledger.recent_jobs(limit)

    def results(
        self, job_id: str, include_input: bool = False, *, status: str | None = None, after: int | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """One row per item, in input order, streamed from the database; only items in ``status``,
        after item ``after``, at most ``limit`` when given."""
        self.status(job_id, explain=False)
        return self.ledger.results(job_id, include_input, status=status, after=after, limit=limit)

    def artifacts(self, job_id: str, item: int | None = None) -> Iterator[StoredArtifact]:
        """A job's binary results (depth maps, masks, audio) with their bytes, in item order:
        ``(item, n, name, media_type, data)`` tuples, only ``item``'s when given; streamed."""
        self.status(job_id, explain=False)
        return self.ledger.artifacts(job_id, item)
