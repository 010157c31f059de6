"""The scheduler's lease, kept on a thread of its own so that a long pass or a slow sink never lets
it lapse: any number of ``sluice scheduler`` processes run, one holds the lease and acts.

The holder renews every ``SLUICE_SCHEDULER_RENEW_SECONDS`` (1 s) for ``SLUICE_SCHEDULER_LEASE_SECONDS``
(5 s); a standby tries as often and takes the lease once it has expired, so a killed holder is
replaced within about lease + renew seconds. A holder counts itself active only until its last
successful renewal's start plus the lease, minus a margin, by its own monotonic clock: when the
database stops answering it stops acting before anyone else can take over.
"""

from __future__ import annotations

import logging
import threading
import time

from sluice.ledger.schedules import SchedulesLedger
from sluice.logs import FailureStreak

log = logging.getLogger("sluice.scheduler")

#: The lease's name in ``scheduler_leases``.
LEASE_NAME = "scheduler"
#: Seconds before the lease's end at which a holder stops acting (clock drift, a slow statement).
MARGIN_S = 0.5


class LeaseKeeper:
    """Takes and renews the lease from a daemon thread; :meth:`active` says whether to act now."""

    def __init__(self, store: SchedulesLedger, holder: str, lease_s: float, renew_s: float) -> None:
        self.store = store
        self.holder = holder
        self.lease_s = lease_s
        self.renew_s = min(renew_s, lease_s / 3)
        self._until = 0.0  # monotonic time the lease is good until (0: not held)
        self._generation = 0  # bumps each time the lease is (re)acquired after a gap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-scheduler-lease", daemon=True)
        self._streak = FailureStreak(log)

    def start(self) -> None:
        self._thread.start()

    def active(self) -> bool:
        return time.monotonic() < self._until - MARGIN_S

    @property
    def generation(self) -> int:
        """Counts acquisitions: a change means the lease was lost and taken again (or taken first)."""
        return self._generation

    def renew_once(self) -> bool:
        """One attempt to take or renew the lease; whether it is held."""
        began = time.monotonic()
        try:
            held = self.store.take_lease(LEASE_NAME, self.holder, self.lease_s)
        except Exception as exc:  # the database is away: the lease runs out by itself
            self._streak.failed(logging.WARNING, "cannot renew the scheduler lease: %s", exc)
            return self.active()
        self._streak.succeeded("the database answers again")
        was_active = self.active()
        if held:
            if not was_active:
                self._generation += 1
                log.info("%s is now the active scheduler", self.holder)
            self._until = began + self.lease_s
        elif was_active:
            log.warning("%s lost the scheduler lease to another scheduler", self.holder)
            self._until = 0.0
        return held

    def _run(self) -> None:
        while not self._stop.is_set():
            self.renew_once()
            self._stop.wait(self.renew_s)

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release`` give the lease up so a standby takes over at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.lease_s)
        if release and self._until:
            self._until = 0.0
            try:
                self.store.release_lease(LEASE_NAME, self.holder)
            except Exception as exc:
                log.warning("could not release the scheduler lease (it expires by itself): %s", exc)
