"""Job callbacks end to end: a local receiver on 127.0.0.1, signatures checked with the secret.

Through the stack's real worker (SQLite and PostgreSQL): a job that ends calls back, after
retries when the receiver fails first; a cancelled job calls back too (its row is written by the
cancel, in another process, and found by the worker's deliverer); the HTTP API and the CLI take
``callback_url``. On a database of their own, without a worker: deliverers racing for a row send
it once, attempts run out into ``failed``, and a host taken off the allow-list is not called.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.cli import main
from sluice.data_commands import print_status
from sluice.ledger import DeliveryInfo, Ledger, NewJob
from sluice.settings import Settings, get_settings
from sluice.status import DeliveryStatus, JobStatus
from sluice.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, deliver_due, start_deliverer, verify
from tests.api_server import make_keys
from tests.conftest import make_settings
from tests.integration.conftest import Stack
from tests.launch import wait_until
from tests.secrets import WEBHOOK_SECRET
from tests.webhook_receiver import Received, receiver

DOCS = ["Callbacks tell a backend its job ended.", "Signed with HMAC-SHA256.", "Retried with back-off."]


def checked(received: list[Received], job_id: str) -> list[dict[str, Any]]:
    """The bodies of ``received``, each verified against its signature and headers."""
    bodies = []
    for request in received:
        assert verify(request.body, request.headers[SIGNATURE_HEADER], WEBHOOK_SECRET), "bad signature"
        body = json.loads(request.body)
        assert body["job"]["id"] == job_id and request.headers["X-Sluice-Job"] == job_id
        assert request.headers["Content-Type"] == "application/json" and request.path == "/hook"
        sent = int(request.headers[TIMESTAMP_HEADER])
        assert abs(sent - time.time()) < 300 and body["sent_at"].endswith("+00:00")
        bodies.append(body)
    return bodies


def delivery(ledger: Ledger, job_id: str, status: DeliveryStatus, timeout: float = 60.0) -> DeliveryInfo:
    """The job's delivery row once it is in ``status`` (recorded just after the receiver answered)."""

    def settled() -> DeliveryInfo | None:
        row = ledger.webhook_delivery(job_id)
        return row if row is not None and row.status is status else None

    try:
        return wait_until(settled, timeout, f"job {job_id}: delivery {status.value}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; it is {ledger.webhook_delivery(job_id)}") from None


def unsent_job(ledger: Ledger, url: str, texts: list[str] | None = None, errors: bool = False) -> str:
    """A job stored with ``callback_url`` whose chunks are never sent (no worker will run it)."""
    job_id = str(uuid.uuid4())
    items = [(n, {"text": t}, "bad item" if errors else None) for n, t in enumerate(texts or DOCS)]
    ledger.create_job(NewJob(job_id, "feature-extraction", "minilm", {}, 0, 64, callback_url=url), items,
                      lambda chunks: None)  # fmt: skip
    return job_id


# through the stack's worker -------------------------------------------------------------------
def test_a_finished_job_calls_back_after_failed_attempts_and_only_once(stack: Stack) -> None:
    with receiver(fail_first=2) as hook:
        job = stack.client.submit("minilm", DOCS, callback_url=hook.url)
        assert stack.client.wait(job, timeout=120).status is JobStatus.COMPLETED
        got = hook.wait_for(job, 3)
        row = delivery(stack.client.ledger, job, DeliveryStatus.DELIVERED)
        bodies = checked(got, job)
        assert [r.answered for r in got] == [500, 500, 200]
        assert [b["attempt"] for b in bodies] == [1, 2, 3]
        assert all(b["event"] == "job.completed" for b in bodies)
        assert bodies[-1]["job"] | {"created_at": None, "started_at": None, "finished_at": None} == {
            "id": job, "status": "completed", "model": "minilm", "task": "feature-extraction", "priority": 0,
            "total": 3, "done": 3, "failed": 0, "counts": {"done": 3, "failed": 0, "pending": 0},
            "created_at": None, "started_at": None, "finished_at": None,
        }  # fmt: skip
        assert (row.attempts, row.last_status_code, row.last_error) == (3, 200, None)
        assert row.delivered_at is not None and row.url == hook.url
        shown = io.StringIO()
        print_status(stack.client, stack.client.status(job), shown)  # what `sluice status JOB` prints
        assert f"  callback: delivered to {hook.url} (3 attempts, HTTP 200) at " in shown.getvalue()
        # A sweep now (what `sluice reconcile --every` runs) finds nothing to send again.
        assert job not in deliver_due(stack.client.ledger, stack.settings).attempted
        assert len(hook.of(job)) == 3


def test_a_cancelled_job_calls_back(stack: Stack) -> None:
    with receiver() as hook:
        job = unsent_job(stack.client.ledger, hook.url)
        assert stack.client.ledger.webhook_delivery(job) is None  # nothing until it ends
        assert stack.client.cancel(job)
        # The cancel wrote the row here; the worker's deliverer finds it on its next pass.
        (body,) = checked(hook.wait_for(job, 1), job)
        assert body["event"] == "job.cancelled" and body["job"]["status"] == "cancelled"
        assert body["job"]["counts"] == {"done": 0, "failed": 0, "pending": 3}
        assert delivery(stack.client.ledger, job, DeliveryStatus.DELIVERED).attempts == 1


def test_the_http_api_takes_a_callback_url(stack: Stack) -> None:
    key = make_keys(stack.settings, f"webhooks-{uuid.uuid4().hex[:6]}")["alice"]
    with receiver() as hook, TestClient(create_app(stack.settings), headers={"Authorization": f"Bearer {key}"}) as http:
        refused = http.post("/jobs", json={"model": "minilm", "items": DOCS, "callback_url": "http://10.1.2.3/x"})
        assert refused.status_code == 422
        assert "10.1.2.3:80 is not on SLUICE_WEBHOOK_ALLOWED_HOSTS" in refused.json()["error"]["message"]
        created = http.post("/jobs", json={"model": "minilm", "items": DOCS, "callback_url": hook.url})
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        (body,) = checked(hook.wait_for(job, 1, timeout=120), job)
        assert body["job"]["status"] == "completed" and body["job"]["done"] == 3


def test_the_cli_takes_a_callback_url(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sluice submit --callback-url``, in process (a subprocess costs seconds of imports)."""
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        before = len(stack.client.jobs(limit=1000))
        assert main(["submit", str(docs), "--model", "minilm", "--callback-url", "https://example.com/h"]) == 2
        assert "example.com:443 is not on SLUICE_WEBHOOK_ALLOWED_HOSTS" in capsys.readouterr().err
        assert len(stack.client.jobs(limit=1000)) == before  # nothing was stored
        with receiver() as hook:
            assert main(["submit", str(docs), "--model", "minilm", "--callback-url", hook.url]) == 0
            job = capsys.readouterr().out.strip()
            (body,) = checked(hook.wait_for(job, 1, timeout=120), job)
        assert body["job"]["status"] == "completed"
    finally:
        get_settings.cache_clear()


# on a database of their own ---------------------------------------------------------------------
@pytest.fixture
def settings(migrated_database_url: str, tmp_path: Path) -> Settings:
    return make_settings(migrated_database_url, "redis://unused", tmp_path, webhook_allowed_hosts=["127.0.0.1"],
                         webhook_secret=WEBHOOK_SECRET, webhook_backoff_s=0.05, webhook_max_attempts=3,
                         webhook_poll_s=0.2)  # fmt: skip


def test_racing_deliverers_send_once(settings: Settings) -> None:
    ledger = Ledger.for_settings(settings)
    with receiver(delay_s=0.3) as hook:  # slow: every deliverer reads the row as due before the first answer
        job = unsent_job(ledger, hook.url)
        ledger.cancel(job)
        start = threading.Barrier(4)

        def deliver() -> None:
            start.wait()
            deliver_due(ledger, settings)

        threads = [threading.Thread(target=deliver) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(hook.of(job)) == 1
        row = delivery(ledger, job, DeliveryStatus.DELIVERED)
        assert row.attempts == 1 and row.last_status_code == 200


def test_attempts_run_out_into_failed(settings: Settings) -> None:
    ledger = Ledger.for_settings(settings)
    with receiver(fail_first=99, fail_status=503) as hook:
        job = unsent_job(ledger, hook.url, errors=True)  # every item invalid: failed as it is stored
        assert ledger.webhook_delivery(job) is not None  # written with the job, in its transaction
        deliverer = start_deliverer(ledger, settings)
        assert deliverer is not None
        try:
            row = delivery(ledger, job, DeliveryStatus.FAILED)
        finally:
            deliverer.stop()
        assert (row.attempts, row.last_status_code, row.delivered_at) == (3, 503, None)
        assert row.last_error == "HTTP 503 Service Unavailable"
        bodies = checked(hook.of(job), job)
        assert [b["attempt"] for b in bodies] == [1, 2, 3] and bodies[0]["event"] == "job.failed"


def test_a_host_taken_off_the_allow_list_is_not_called(settings: Settings) -> None:
    ledger = Ledger.for_settings(settings)
    with receiver() as hook:
        job = unsent_job(ledger, hook.url)
        ledger.cancel(job)
        narrowed = settings.model_copy(update={"webhook_allowed_hosts": ["hooks.example.com"]})
        assert deliver_due(ledger, narrowed).given_up == [job]
        assert hook.of(job) == []
        row = ledger.webhook_delivery(job)
        assert row is not None and row.status is DeliveryStatus.FAILED and row.attempts == 1
        assert row.last_error is not None and "not on SLUICE_WEBHOOK_ALLOWED_HOSTS" in row.last_error


def test_no_callback_url_no_row(settings: Settings) -> None:
    ledger = Ledger.for_settings(settings)
    job = str(uuid.uuid4())
    ledger.create_job(NewJob(job, "feature-extraction", "minilm", {}, 0, 64), [(0, {"text": "x"}, None)],
                      lambda chunks: None)  # fmt: skip
    assert ledger.cancel(job)
    assert ledger.webhook_delivery(job) is None and ledger.next_webhook_due() is None
