"""A worker hook that kills its own process when it claims the poison item, as a segfault in a
model or the kernel's out-of-memory killer would."""

from __future__ import annotations

import os
import signal

from sluice.ledger import Claim
from worker.hooks import Hooks

POISON = "poison: this item kills the worker"


class DieOnPoison(Hooks):
    def chunk_claimed(self, claims: list[Claim]) -> None:
        if any(fields.get("text") == POISON for c in claims for _, fields in c.items):
            os.kill(os.getpid(), signal.SIGKILL)
