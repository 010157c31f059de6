"""A worker hook that paces a worker, so that a fault can land in the middle of a job that a tiny
model would otherwise finish at once.

Each chunk run starts ``SLUICE_TEST_CHUNK_PAUSE`` seconds (0.4 by default) after its claim. With
``SLUICE_TEST_HOLD`` naming a file, the run of any chunk whose index is at least
``SLUICE_TEST_HOLD_FROM`` waits while that file exists (60 s at most): the test knows which chunk
is in flight when it injects the fault, and lets it go by removing the file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sluice.ledger import Claim
from worker.hooks import Hooks

HOLD_LIMIT_S = 60.0


class PacedChunks(Hooks):
    def chunk_claimed(self, claims: list[Claim]) -> None:
        time.sleep(float(os.environ.get("SLUICE_TEST_CHUNK_PAUSE", "0.4")))
        hold = os.environ.get("SLUICE_TEST_HOLD")
        if hold and any(c.idx >= int(os.environ.get("SLUICE_TEST_HOLD_FROM", "0")) for c in claims):
            deadline = time.monotonic() + HOLD_LIMIT_S
            while Path(hold).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
