"""Back-off while a service the worker needs is unreachable, logged once per state change.

A database outage must not turn a worker into a hot loop (every message claimed, failed, requeued
and redelivered at once: thousands of cycles and megabytes of log a minute). The worker waits an
exponentially growing, jittered, capped delay after each failure before it hands the message
back, logs when the outage starts and when it ends, and nothing in between.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger("sluice.worker")

BASE_S = 0.5
CAP_S = 30.0


def delay(failures: int, base: float = BASE_S, cap: float = CAP_S, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failure number ``failures`` (1, 2, ...): "full jitter" over a doubling,
    capped window, so a fleet of workers does not retry in step."""
    window = min(cap, base * 2.0 ** min(failures - 1, 32))
    return window / 2 + rand() * window / 2


class Outage:
    """Consecutive failures of one dependency; ``sleep`` is injectable for tests."""

    def __init__(self, what: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.what = what
        self.failures = 0
        self.since: float | None = None
        self._sleep = sleep

    def failed(self, error: BaseException) -> None:
        """Count a failure and wait before the caller retries."""
        self.failures += 1
        if self.failures == 1:
            self.since = time.monotonic()
            log.error("%s unreachable; retrying with back-off (up to %.0fs apart): %s", self.what, CAP_S, error)
        self._sleep(delay(self.failures))

    def succeeded(self) -> None:
        """The dependency answered: log the end of an outage, if there was one."""
        if self.failures:
            took = time.monotonic() - (self.since or time.monotonic())
            log.warning("%s reachable again after %.1fs and %d failed attempt(s)", self.what, took, self.failures)
        self.failures, self.since = 0, None
