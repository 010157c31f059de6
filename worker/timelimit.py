"""A hard time limit for one chunk's run in the solo pool, where Celery enforces none.

``SIGALRM`` interrupts the main thread between Python bytecodes (a running kernel finishes its
op first), raising :class:`ChunkTimeLimitError` into the forward loop; the run then fails, its
chunk is released, and a redelivery splits it (see the ledger's ``claim``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from sluice.errors import SluiceError


class ChunkTimeLimitError(BaseException):
    """A chunk ran past ``SLUICE_CHUNK_TIME_LIMIT``.

    A BaseException, as KeyboardInterrupt is: the engine's per-item ``except Exception`` must not
    mistake it for a bad item, nor a hook's guard swallow it. The runtime turns it into a
    :class:`ChunkTimedOut` once the chunk is released.
    """


class ChunkTimedOut(SluiceError):
    """A chunk's run was stopped at its time limit; the chunk was released for a retry."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`ChunkTimeLimitError` in the block after ``seconds`` (None or off the main thread: no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise ChunkTimeLimitError(f"the chunk ran past its time limit of {seconds:g}s (SLUICE_CHUNK_TIME_LIMIT)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
