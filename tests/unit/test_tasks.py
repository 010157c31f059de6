"""The Celery task glue: a failed chunk is requeued, not acked as done; a malformed one is dropped."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject

import worker.tasks
from worker.messages import BAD_CHUNK_INDEX, BAD_JOB_ID

JOB = "0ae70eae-d4da-4855-a7b8-dd7bba935426"  # fixed: test ids must be the same in every xdist worker


class Failing:
    def process_chunk(self, job_id: str, idx: int) -> Any:
        raise OSError("database went away")


class Untouchable:
    def process_chunk(self, job_id: str, idx: int) -> Any:
        raise AssertionError("no work for a message that cannot name a chunk")


def test_a_failed_chunk_is_rejected_with_requeue() -> None:
    with pytest.raises(Reject) as info:
        worker.tasks.run_chunk(Failing(), JOB, 3)
    assert info.value.requeue is True
    assert "OSError: database went away" in str(info.value.reason)


@pytest.mark.parametrize(
    ("job_id", "idx", "reason"),
    [
        ("job", 3, BAD_JOB_ID),
        ("not-a-uuid\x00", 0, BAD_JOB_ID),
        (JOB, 2**40, BAD_CHUNK_INDEX),
        (JOB, -1, BAD_CHUNK_INDEX),
    ],
)
def test_arguments_that_cannot_name_a_chunk_are_dropped_not_requeued(job_id: Any, idx: Any, reason: str) -> None:
    assert worker.tasks.run_chunk(Untouchable(), job_id, idx)["dropped"] == reason


def test_the_task_uses_the_guarded_strategy() -> None:
    from sluice.celery_app import create_app
    from sluice.settings import Settings

    task = worker.tasks.register(create_app(Settings(broker_url="redis://127.0.0.1:1/0")), Untouchable())
    assert task.Strategy == "worker.messages:chunk_strategy" and task.acks_late
