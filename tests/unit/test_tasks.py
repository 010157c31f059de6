"""The Celery task glue: a failed chunk is requeued, not acked as done."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject

import worker.tasks


class Failing:
    def process_chunk(self, job_id: str, idx: int) -> Any:
        raise OSError("database went away")


def test_a_failed_chunk_is_rejected_with_requeue() -> None:
    with pytest.raises(Reject) as info:
        worker.tasks.run_chunk(Failing(), "job", 3)
    assert info.value.requeue is True
    assert "OSError: database went away" in str(info.value.reason)
