"""A worker hook that kills its own process when it claims the poison item, as a segfault in a
model or the kernel's out-of-memory killer would."""

from __future__ import annotations

import os
import signal
import time

from sluice.ledger import Claim
from worker.hooks import Hooks

POISON = "poison: this item kills the worker"


class DieOnPoison(Hooks):
    def chunk_claimed(self, claims: list[Claim]) -> None:
        if any(fields.get("text") == POISON for c in claims for _, fields in c.items):
            os.kill(os.getpid(), signal.SIGKILL)


SLOW = "slow: this item never finishes"


class HangOnSlow(Hooks):
    """Hangs every run that holds the slow item (as a model stuck in a kernel would), so only the
    chunk time limit can stop it."""

    def __init__(self, settings: object) -> None:
        super().__init__(settings)  # type: ignore[arg-type]
        self.hang = False

    def chunk_claimed(self, claims: list[Claim]) -> None:
        self.hang = any(fields.get("text") == SLOW for c in claims for _, fields in c.items)

    def batch_finished(self, model: str, stats: object, n_results: int) -> None:
        if self.hang:
            time.sleep(3600)
