from __future__ import annotations

from sluice.celery_app import celery_config, redis_priority
from sluice.settings import Settings


def test_reliability_settings() -> None:
    conf = celery_config(Settings(broker_url="redis://example:6379/0"))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["task_ignore_result"]
    assert conf["result_backend"] is None
    assert conf["broker_transport_options"]["priority_steps"] == list(range(10))


def test_priority_nine_is_served_first_on_redis() -> None:
    assert redis_priority(9) == 0 and redis_priority(0) == 9 and redis_priority(42) == 0
