"""Job callbacks without a database: URL checks, the signed body, the back-off schedule, one POST."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_callback_url
from sluice.errors import ValidationError
from sluice.ledger import JobInfo
from sluice.logs import settings_secrets
from sluice.settings import Settings
from sluice.status import JobStatus
from sluice.webhooks import (
    MAX_BACKOFF_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff_s,
    callback_problem,
    canonical_json,
    headers,
    host_allowed,
    post,
    sign,
    summary,
    verify,
)
from tests.secrets import WEBHOOK_SECRET
from tests.webhook_receiver import receiver
from worker.hooks import HookChain
from worker.webhooks import WebhookHooks, enable_webhooks

ALLOWED = ["hooks.example.com", "api.example.org:8443", "*.corp.example", "127.0.0.1", "[::1]:9000"]
SETTINGS = Settings(webhook_allowed_hosts=ALLOWED, webhook_secret=WEBHOOK_SECRET)
WHEN = datetime(2026, 11, 28, 12, 30, 5, 250000, tzinfo=UTC)


def job_info(status: JobStatus = JobStatus.COMPLETED) -> JobInfo:
    return JobInfo(
        id="0b7c2a4e-0000-4000-8000-000000000001", model="minilm", task="feature-extraction", status=status,
        priority=3, total=10, done=7, failed=2, created_at=datetime(2026, 11, 28, 12, 0),  # naive: SQLite's
        started_at=datetime(2026, 11, 28, 12, 1, tzinfo=UTC), finished_at=datetime(2026, 11, 28, 12, 30, tzinfo=UTC),
    )  # fmt: skip


# the signature ------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_the_body_bytes() -> None:
    body = b'{"job":{"id":"x"}}'
    expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, WEBHOOK_SECRET) == f"sha256={expected}"
    # a fixed vector, so a change of algorithm or encoding cannot pass unnoticed
    assert sign(b"hello", "key") == "sha256=9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b"
    assert verify(body, f"sha256={expected}", WEBHOOK_SECRET)
    assert not verify(body + b" ", f"sha256={expected}", WEBHOOK_SECRET)
    assert not verify(body, f"sha256={expected}", "another-secret")
    assert not verify(body, expected, WEBHOOK_SECRET)  # the scheme prefix is part of the value


def test_the_readme_snippet_verifies_a_callback() -> None:
    """The receiver's check printed in README "Webhooks" accepts what Sluice sends and nothing else."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Webhooks") :]
    start = section.index("```python") + len("```python")
    snippet = section[start : section.index("```\n", start)]
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # our own README's code
    now = datetime.now(UTC)
    body = canonical_json(summary(job_info(), 1, now))
    head = headers(body, WEBHOOK_SECRET, "job-1", 1, now)
    assert scope["verified"](body, head[SIGNATURE_HEADER], WEBHOOK_SECRET)["job"]["done"] == 7
    with pytest.raises(ValueError, match="bad signature"):
        scope["verified"](body.replace(b'"done":7', b'"done":8'), head[SIGNATURE_HEADER], WEBHOOK_SECRET)
    old = canonical_json(summary(job_info(), 1, WHEN))
    with pytest.raises(ValueError, match="stale"):
        scope["verified"](old, sign(old, WEBHOOK_SECRET), WEBHOOK_SECRET)


def test_headers_sign_the_body_and_carry_the_time() -> None:
    body = canonical_json(summary(job_info(), 2, WHEN))
    head = headers(body, WEBHOOK_SECRET, "job-1", 2, WHEN)
    assert verify(body, head[SIGNATURE_HEADER], WEBHOOK_SECRET)
    assert head[TIMESTAMP_HEADER] == str(int(WHEN.timestamp()))
    assert head["Content-Type"] == "application/json"
    assert (head["X-Sluice-Job"], head["X-Sluice-Attempt"]) == ("job-1", "2")
    assert WEBHOOK_SECRET not in json.dumps(head)


# the body -----------------------------------------------------------------------------------
def test_body_is_canonical_json_of_the_job_summary() -> None:
    body = canonical_json(summary(job_info(), 1, WHEN))
    data = json.loads(body)
    assert body == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert data == {
        "event": "job.completed",
        "attempt": 1,
        "sent_at": "2026-11-28T12:30:05.250000+00:00",
        "job": {
            "id": "0b7c2a4e-0000-4000-8000-000000000001", "status": "completed", "model": "minilm",
            "task": "feature-extraction", "priority": 3, "total": 10, "done": 7, "failed": 2,
            "counts": {"done": 7, "failed": 2, "pending": 1},
            "created_at": "2026-11-28T12:00:00+00:00", "started_at": "2026-11-28T12:01:00+00:00",
            "finished_at": "2026-11-28T12:30:00+00:00",
        },
    }  # fmt: skip


def test_canonical_json_keeps_unicode_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": "café"}) == '{"a":"café","b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_event_names_how_the_job_ended(status: JobStatus) -> None:
    assert summary(job_info(status), 1, WHEN)["event"] == f"job.{status.value}"


# the back-off schedule ----------------------------------------------------------------------
def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(MAX_BACKOFF_S, 5 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, 5, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w < ceiling for w in waits), attempt
        assert max(waits) - min(waits) > ceiling / 4  # jitter spreads retries out
    assert backoff_s(1000, 5, rng) < MAX_BACKOFF_S  # no overflow however many attempts


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    assert [backoff_s(n, 0.5, random.Random(1)) for n in (1, 2, 3)] == [
        backoff_s(n, 0.5, random.Random(1)) for n in (1, 2, 3)
    ]


# which URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/sluice?token=abc",
        "http://HOOKS.example.com:8080/x",  # a bare host allows any port
        "https://api.example.org:8443/done",
        "https://a.b.corp.example/x",
        "http://127.0.0.1:5000/hook",
        "http://[::1]:9000/",
    ],
)
def test_allowed_urls(url: str) -> None:
    assert callback_problem(url, SETTINGS) is None
    assert check_callback_url(url, SETTINGS) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/x", "must be an absolute http:// or https:// URL"),
        ("hooks.example.com/x", "must be an absolute http:// or https:// URL"),
        ("https:///nohost", "must be an absolute http:// or https:// URL"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://user:pw@hooks.example.com/", "must not hold credentials"),
        ("https://evil.example.com/", "host evil.example.com:443 is not on SLUICE_WEBHOOK_ALLOWED_HOSTS"),
        ("https://hooks.example.com.evil.net/", "is not on SLUICE_WEBHOOK_ALLOWED_HOSTS"),
        ("https://api.example.org/done", "host api.example.org:443 is not on"),  # only :8443 is allowed
        ("https://corp.example/", "is not on"),  # *.corp.example is for subdomains
        ("http://localhost:5000/", "is not on"),  # 127.0.0.1 is allowed, not its names
        ("http://[::1]:9001/", "is not on"),
        ("https://hooks.example.com/" + "x" * 2100, "over the limit of 2,048"),
        (42, "must be a string"),
    ],
)
def test_refused_urls_say_what_to_fix(url: Any, says: str) -> None:
    problem = callback_problem(url, SETTINGS)
    assert problem is not None and says in problem
    with pytest.raises(ValidationError, match="callback_url"):
        check_callback_url(url, SETTINGS)


def test_callbacks_need_an_allow_list_and_a_secret() -> None:
    off = callback_problem("https://hooks.example.com/", Settings(webhook_secret=WEBHOOK_SECRET))
    assert off is not None and "SLUICE_WEBHOOK_ALLOWED_HOSTS is empty" in off and "hooks.example.com" in off
    unsigned = callback_problem("https://hooks.example.com/", Settings(webhook_allowed_hosts=ALLOWED))
    assert unsigned is not None and "SLUICE_WEBHOOK_SECRET" in unsigned
    assert check_callback_url(None, Settings()) is None  # no callback: nothing to configure


def test_a_malformed_allow_list_entry_allows_nothing() -> None:
    assert not host_allowed("example.com", 80, ["example.com:http"])
    assert host_allowed("example.com", 80, ["example.com:http", "example.com"])


def test_allow_list_reads_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOWED_HOSTS", "a.example, b.example:8443")
    assert Settings().webhook_allowed_hosts == ["a.example", "b.example:8443"]
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOWED_HOSTS", '["c.example"]')
    assert Settings().webhook_allowed_hosts == ["c.example"]


def test_the_secret_is_masked_in_logs() -> None:
    assert WEBHOOK_SECRET in settings_secrets(SETTINGS)
    assert WEBHOOK_SECRET not in repr(SETTINGS)


# one POST -----------------------------------------------------------------------------------
def test_post_outcomes() -> None:
    with receiver(fail_first=1) as server:
        first = post(server.url, b"{}", {"X-Sluice-Job": "j", "Content-Type": "application/json"}, 5)
        second = post(server.url, b"{}", {"X-Sluice-Job": "j", "Content-Type": "application/json"}, 5)
    assert (first.code, first.ok, first.error) == (500, False, "HTTP 500 Internal Server Error")
    assert (second.code, second.ok, second.error) == (200, True, None)
    assert [r.body for r in server.requests] == [b"{}", b"{}"]


@pytest.fixture
def redirecting() -> Iterator[str]:
    """A server that answers every POST with a redirect to a host that is not allowed."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", "http://evil.example.com/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_redirects_are_not_followed(redirecting: str) -> None:
    outcome = post(redirecting, b"{}", {}, 5)
    assert outcome.code == 307 and not outcome.ok
    assert outcome.error is not None and "not followed" in outcome.error


def test_unreachable_and_slow_receivers_are_outcomes_not_errors() -> None:
    with receiver() as server:
        closed = server.url  # the port is free once the server is gone
    refused = post(closed, b"{}", {}, 2)
    assert refused.code is None and not refused.ok and refused.error
    with receiver(delay_s=1.0) as slow:
        timed_out = post(slow.url, b"{}", {}, 0.2)
    assert timed_out.code is None and timed_out.error is not None and "timed out" in timed_out.error.lower()


# the worker hook ----------------------------------------------------------------------------
def test_worker_attaches_the_hook_only_with_a_secret(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'never-opened.db'}"  # the hook's ledger connects only when it delivers
    chain = HookChain(Settings(database_url=url))
    assert not enable_webhooks(chain, Settings(database_url=url))
    assert chain.hooks == []
    signed = Settings(database_url=url, webhook_secret=WEBHOOK_SECRET)
    assert enable_webhooks(chain, signed) and enable_webhooks(chain, signed)
    assert [type(h) for h in chain.hooks] == [WebhookHooks]
