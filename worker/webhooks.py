"""Job callbacks from a worker, attached as a hook (:class:`WebhookHooks`).

``run_worker`` adds it to the hook chain when ``SLUICE_WEBHOOK_SECRET`` is set. ``job_finished``
(the writer thread, right after the transaction that ended the job and wrote its outbox row)
only nudges a :class:`~sluice.webhooks.Deliverer`, whose own daemon thread claims and POSTs due
callbacks, so no worker thread ever waits on a receiver. The same thread retries failures when
they are due and picks up callbacks of jobs that ended elsewhere (a cancel) within
``SLUICE_WEBHOOK_POLL_S``.
"""

from __future__ import annotations

from sluice.ledger import Ledger
from sluice.settings import Settings
from sluice.webhooks import Deliverer
from worker.hooks import HookChain, Hooks


class WebhookHooks(Hooks):
    """Hands ended jobs to a background deliverer; never blocks the event's thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.deliverer = Deliverer(Ledger.for_settings(settings), settings)

    def worker_started(self, hostname: str, device: str, queues: list[str]) -> None:
        self.deliverer.nudge()  # callbacks left due while no deliverer ran go out now

    def job_finished(self, job_ids: list[str]) -> None:
        self.deliverer.nudge()

    def worker_stopping(self, hostname: str) -> None:
        self.deliverer.stop()  # a row it holds is taken over when its claim runs out


def enable_webhooks(hooks: HookChain, settings: Settings) -> bool:
    """With ``SLUICE_WEBHOOK_SECRET`` set, make sure the chain has a :class:`WebhookHooks` (one
    named in ``SLUICE_HOOKS`` counts); whether it has one."""
    if settings.webhook_secret is None:
        return False
    if not any(isinstance(h, WebhookHooks) for h in hooks.hooks):
        hooks.hooks.append(WebhookHooks(settings))
    return True
