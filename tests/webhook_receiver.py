"""A job-callback receiver for the tests: an HTTP server on 127.0.0.1 in a thread of the test process.

It records every request (headers and body bytes), answers the first ``fail_first`` requests of
each job with ``fail_status`` and the rest with 200, optionally after ``delay_s``, and lets a
test wait (with a deadline) for the requests it expects.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


class Receiver:
    def __init__(self, fail_first: int = 0, fail_status: int = 500, delay_s: float = 0.0) -> None:
        self.fail_first, self.fail_status, self.delay_s = fail_first, fail_status, delay_s
        self.requests: list[Received] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a slow answer still running does not hold up the test
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = receiver._answer(self.path, dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow receiver (what a claim must cover), not a wait for work
        with self._changed:
            job = headers.get("X-Sluice-Job", "")
            self._seen[job] += 1
            code = self.fail_status if self._seen[job] <= self.fail_first else 200
            self.requests.append(Received(path, headers, body, code))
            self._changed.notify_all()
        return code

    def of(self, job_id: str) -> list[Received]:
        """The requests received for ``job_id`` so far."""
        with self._lock:
            return self._of(job_id)

    def _of(self, job_id: str) -> list[Received]:
        return [r for r in self.requests if r.headers.get("X-Sluice-Job") == job_id]

    def wait_for(self, job_id: str, count: int, timeout: float = 60.0) -> list[Received]:
        """The job's requests once there are ``count``; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._of(job_id)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"job {job_id}: {count} callback(s) expected, got {len(self._of(job_id))}")
                self._changed.wait(left)
            return self._of(job_id)


@contextmanager
def receiver(**options: Any) -> Iterator[Receiver]:
    """A running :class:`Receiver`, shut down afterwards."""
    found = Receiver(**options)
    thread = threading.Thread(target=found.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()
