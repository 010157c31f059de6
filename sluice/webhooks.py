"""Job callbacks: when a job that names a ``callback_url`` ends, POST its summary there, signed.

The body is the job's summary as canonical JSON (sorted keys, no spaces, UTF-8), with the attempt
number and ``sent_at`` inside it, so the signature covers the time too (a receiver can refuse
replays). ``X-Sluice-Signature: sha256=<hex>`` is HMAC-SHA256 of the body's bytes under
``SLUICE_WEBHOOK_SECRET``; ``X-Sluice-Timestamp`` repeats ``sent_at`` as Unix seconds.

Delivery is at least once: the outbox row is written with the job's end (:mod:`sluice.ledger.webhooks`),
deliverers claim a row before they POST, a non-2xx answer or a network error is retried with
exponential back-off and jitter up to ``SLUICE_WEBHOOK_MAX_ATTEMPTS``, and every attempt's outcome
is recorded on the row. A :class:`Deliverer` runs on a daemon thread of its own (in each worker,
nudged by ``job_finished``, and in ``sluice reconcile --every``), so no worker ever waits on HTTP.

Only hosts on ``SLUICE_WEBHOOK_ALLOWED_HOSTS`` are called (checked at submit and again before
each attempt); redirects are not followed (they could lead off the list).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sluice.clock import as_utc, utcnow
from sluice.db import CALLBACK_URL_CHARS
from sluice.logs import FailureStreak
from sluice.status import DeliveryStatus

if TYPE_CHECKING:
    from sluice.ledger import DueDelivery, JobInfo, Ledger
    from sluice.settings import Settings

log = logging.getLogger("sluice.webhooks")

SIGNATURE_HEADER = "X-Sluice-Signature"
TIMESTAMP_HEADER = "X-Sluice-Timestamp"
#: Longest wait between two attempts, whatever the back-off base and attempt number.
MAX_BACKOFF_S = 3600.0
#: Rows one pass of a deliverer takes on; a full pass is followed by another at once.
PASS_ROWS = 50
_DEFAULT_PORTS = {"http": 80, "https": 443}


# what may be called ---------------------------------------------------------------------------
def _entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port or None for any): ``host``, ``host:port``, ``[v6]:port``, ``*.domain``."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, None


def host_allowed(host: str, port: int, allowed: list[str]) -> bool:
    """Whether ``host:port`` is on the allow-list: an exact host (any port, or the one named), or
    a subdomain of a ``*.domain`` entry."""
    host = host.lower().rstrip(".")
    for raw in allowed:
        try:
            name, only = _entry(raw)
        except ValueError:  # a malformed port: the entry allows nothing
            continue
        if only is not None and only != port:
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:]) and len(host) > len(name) - 1):
            return True
    return False


def callback_problem(url: Any, settings: Settings) -> str | None:
    """Why ``url`` cannot be a job's ``callback_url`` under ``settings`` (saying what to fix), or None."""
    if not isinstance(url, str):
        return f"callback_url must be a string (an http:// or https:// URL), got {type(url).__name__}"
    if len(url) > CALLBACK_URL_CHARS:
        return f"callback_url has {len(url):,} characters, over the limit of {CALLBACK_URL_CHARS:,}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"callback_url is not a valid URL ({exc})"
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return "callback_url must be an absolute http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "callback_url must not hold credentials (user:password@); the receiver checks X-Sluice-Signature"
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        return "callbacks need SLUICE_WEBHOOK_SECRET (the key that signs them) set where jobs are submitted"
    where = f"{parts.hostname}:{port or _DEFAULT_PORTS[parts.scheme]}"
    if not settings.webhook_allowed_hosts:
        return f"callbacks are off: SLUICE_WEBHOOK_ALLOWED_HOSTS is empty; add {parts.hostname} (or {where}) to it"
    if not host_allowed(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], settings.webhook_allowed_hosts):
        return f"callback_url's host {where} is not on SLUICE_WEBHOOK_ALLOWED_HOSTS; add it there to allow it"
    return None


# what is sent ----------------------------------------------------------------------------------
def canonical_json(value: Any) -> bytes:
    """``value`` as the bytes that are signed and sent: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(body: bytes, secret: str) -> str:
    """The ``X-Sluice-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str, secret: str) -> bool:
    """Whether ``signature`` (the header's value) signs ``body`` under ``secret``, in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def summary(info: JobInfo, attempt: int, sent_at: datetime) -> dict[str, Any]:
    """The callback's body for a job that ended: what it is, how it ended, its counts and times."""
    return {
        "event": f"job.{info.status.value}",
        "attempt": attempt,
        "sent_at": _iso(sent_at),
        "job": {
            "id": info.id, "status": info.status.value, "model": info.model, "task": info.task,
            "priority": info.priority, "total": info.total, "done": info.done, "failed": info.failed,
            "counts": {"done": info.done, "failed": info.failed, "pending": info.pending},
            "created_at": _iso(info.created_at), "started_at": _iso(info.started_at),
            "finished_at": _iso(info.finished_at),
        },
    }  # fmt: skip


def headers(body: bytes, secret: str, job_id: str, attempt: int, sent_at: datetime) -> dict[str, str]:
    """The headers of one attempt."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "sluice-webhooks/1",
        SIGNATURE_HEADER: sign(body, secret),
        TIMESTAMP_HEADER: str(int(as_utc(sent_at).timestamp())),
        "X-Sluice-Job": job_id,
        "X-Sluice-Attempt": str(attempt),
    }


def backoff_s(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first): ``base * 2**(attempt-1)``
    capped at :data:`MAX_BACKOFF_S`, times a jitter in [0.5, 1) so deliverers that failed together
    do not retry together."""
    ceiling = min(MAX_BACKOFF_S, base * 2.0 ** min(attempt - 1, 60))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


# how it is sent --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One POST's result: the HTTP status (None when no answer came) and what went wrong, if anything."""

    code: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is an outcome (a failure), never followed: it could lead off the allow-list."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, head: dict[str, str], timeout: float) -> Outcome:
    """POST ``body``; never raises for what the network or the receiver does."""
    request = urllib.request.Request(url, data=body, headers=head, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(4096)  # let the receiver finish its answer; its body is not kept
            return Outcome(int(response.status))
    except urllib.error.HTTPError as exc:
        exc.close()
        moved = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        return Outcome(exc.code, f"HTTP {exc.code} {exc.reason}".strip() + moved)
    except urllib.error.URLError as exc:
        return Outcome(None, f"{type(exc.reason).__name__}: {exc.reason}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}")


# delivering ------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """What one pass of :func:`deliver_due` did."""

    attempted: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    #: whether the pass stopped at its row limit (more may be due now)
    more: bool = False
    #: when the soonest pending delivery is due after this pass; None when none is pending
    next_due: datetime | None = None


def deliver_due(
    ledger: Ledger, settings: Settings, *, limit: int = PASS_ROWS, rng: random.Random | None = None
) -> Sweep:
    """One pass: claim and POST every delivery due now (up to ``limit``), record each outcome.

    Does nothing without ``SLUICE_WEBHOOK_SECRET`` (nothing could be signed). Raises only for the
    database (the caller retries the pass later); a receiver's failures are recorded and retried.
    """
    sweep = Sweep()
    if settings.webhook_secret is None:
        return sweep
    due = ledger.due_webhooks(utcnow(), limit)
    sweep.more = len(due) >= limit
    for row in due:
        outcome = _attempt(ledger, settings, row, rng)
        if outcome is None:
            continue  # another deliverer claimed it first
        sweep.attempted.append(row.job_id)
        if outcome is DeliveryStatus.DELIVERED:
            sweep.delivered.append(row.job_id)
        elif outcome is DeliveryStatus.FAILED:
            sweep.given_up.append(row.job_id)
    sweep.next_due = ledger.next_webhook_due()
    return sweep


def _attempt(ledger: Ledger, settings: Settings, row: DueDelivery, rng: random.Random | None) -> DeliveryStatus | None:
    """Claim one due delivery, POST it and record the outcome; the status it is left in, or None
    when it was not claimed. The claim holds the row for three timeouts (a connect and reads)."""
    now = utcnow()
    if not ledger.claim_webhook(row, now, now + timedelta(seconds=3 * settings.webhook_timeout_s + 5)):
        return None
    attempt = row.attempts + 1
    where = urlsplit(row.url).hostname or "?"  # logs name the host only: a URL's query may hold a token
    info = ledger.job(row.job_id)
    problem = callback_problem(row.url, settings) if info is not None else "the job no longer exists"
    if problem is not None or info is None or settings.webhook_secret is None:
        log.error("job %s: callback to %s given up: %s", row.job_id, where, problem)
        ledger.record_webhook(row.job_id, attempt, DeliveryStatus.FAILED, code=None, error=problem, now=utcnow())
        return DeliveryStatus.FAILED
    body = canonical_json(summary(info, attempt, now))
    head = headers(body, settings.webhook_secret.get_secret_value(), row.job_id, attempt, now)
    outcome = post(row.url, body, head, settings.webhook_timeout_s)
    return _record(ledger, settings, row.job_id, attempt, outcome, where, rng)


def _record(
    ledger: Ledger, settings: Settings, job_id: str, attempt: int, outcome: Outcome, where: str,
    rng: random.Random | None,
) -> DeliveryStatus:  # fmt: skip
    """Record one attempt's outcome and log it; the status the row is left in."""
    now = utcnow()
    if outcome.ok:
        log.info("job %s: callback delivered to %s (attempt %d, HTTP %s)", job_id, where, attempt, outcome.code)
        ledger.record_webhook(job_id, attempt, DeliveryStatus.DELIVERED, code=outcome.code, error=None, now=now)
        return DeliveryStatus.DELIVERED
    error = outcome.error or f"HTTP {outcome.code}"
    if attempt >= settings.webhook_max_attempts:
        log.error("job %s: callback to %s given up after %d attempts: %s", job_id, where, attempt, error)
        ledger.record_webhook(job_id, attempt, DeliveryStatus.FAILED, code=outcome.code, error=error, now=now)
        return DeliveryStatus.FAILED
    wait = backoff_s(attempt, settings.webhook_backoff_s, rng)
    log.warning("job %s: callback to %s failed (attempt %d of %d: %s); next in %.1f s",
                job_id, where, attempt, settings.webhook_max_attempts, error, wait)  # fmt: skip
    ledger.record_webhook(job_id, attempt, DeliveryStatus.PENDING, code=outcome.code, error=error, now=now,
                          retry_at=now + timedelta(seconds=wait))  # fmt: skip
    return DeliveryStatus.PENDING


class Deliverer:
    """Delivers due callbacks from a daemon thread: a pass when nudged (a job just ended), when the
    soonest retry is due, and at least every ``SLUICE_WEBHOOK_POLL_S`` (jobs ended elsewhere: a
    cancel, another process). :meth:`nudge` and :meth:`stop` return at once, never waiting on HTTP."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger = ledger
        self.settings = settings
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._streak = FailureStreak(log)

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sluice-webhooks", daemon=True)
                self._thread.start()

    def nudge(self) -> None:
        """Make a pass soon (starting the thread if needed)."""
        self.start()
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to end after its current attempt; a claimed row it leaves is taken over later."""
        self._stopping.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before the pass: a nudge during it makes the next wait return at once
            self._wake.wait(self._pass())

    def _pass(self) -> float:
        """One pass; the seconds to wait before the next."""
        poll = self.settings.webhook_poll_s
        try:
            sweep = deliver_due(self.ledger, self.settings)
        except Exception as exc:  # the database is away for a moment: say so once, try again later
            self._streak.failed(logging.WARNING, "callback deliveries paused: %s; retrying every %.0f s", exc, poll)
            return poll
        self._streak.succeeded("callback deliveries resumed")
        if sweep.more:
            return 0.0
        if sweep.next_due is None:
            return poll
        return min(poll, max(0.0, (as_utc(sweep.next_due) - utcnow()).total_seconds()))


def start_deliverer(ledger: Ledger, settings: Settings) -> Deliverer | None:
    """A started :class:`Deliverer` when ``SLUICE_WEBHOOK_SECRET`` is set (else callbacks cannot be signed: None)."""
    if settings.webhook_secret is None:
        return None
    deliverer = Deliverer(ledger, settings)
    deliverer.start()
    return deliverer
