"""The ledger: every statement over Sluice's tables (jobs, chunks, items, workers), and the job
and chunk state machine (:mod:`sluice.ledger.transitions`), in one place.

Producers, workers, recovery, routing and the shell call :class:`Ledger`; no other module builds
SQL over these tables. The parts are split by who calls them: :mod:`~sluice.ledger.jobs`
(producers and readers), :mod:`~sluice.ledger.claims` (workers), :mod:`~sluice.ledger.workers`
(presence and routing), :mod:`~sluice.ledger.recovery` (reconcile), :mod:`~sluice.ledger.stats`
(cluster figures for the metrics exporter and ``sluice top``), for the HTTP API
:mod:`~sluice.ledger.api` (keys, files) and :mod:`~sluice.ledger.batches` (OpenAI-style batches),
:mod:`~sluice.ledger.webhooks` (the job callbacks' outbox), and :mod:`~sluice.ledger.artifacts`
(items' binary results).
"""

from sluice.ledger.api import FileInfo, KeyInfo
from sluice.ledger.artifacts import ArtifactsLedger, StoredArtifact
from sluice.ledger.batches import TERMINAL, BatchesLedger, BatchInfo
from sluice.ledger.claims import Claim, ClaimsLedger, Split, Written
from sluice.ledger.codec import ACTIVE_JOBS, RESULT_COLUMNS, csv_cells
from sluice.ledger.jobs import JobInfo, JobsLedger, NewItem, NewJob
from sluice.ledger.recovery import ChunkRef, RecoveryLedger
from sluice.ledger.stats import ChunkGroup, ClusterStats, RunningChunk, StatsLedger
from sluice.ledger.webhooks import DeliveryInfo, DueDelivery, WebhooksLedger
from sluice.ledger.workers import WorkersLedger


class Ledger(JobsLedger, ClaimsLedger, WorkersLedger, RecoveryLedger, BatchesLedger, StatsLedger, WebhooksLedger,
             ArtifactsLedger):  # fmt: skip
    """One database's ledger: ``Ledger.for_settings(settings)``."""


__all__ = [
    "ACTIVE_JOBS", "RESULT_COLUMNS", "TERMINAL", "BatchInfo", "ChunkGroup", "ChunkRef", "Claim", "ClusterStats",
    "DeliveryInfo", "DueDelivery", "FileInfo", "JobInfo", "KeyInfo", "Ledger", "NewItem", "NewJob", "RunningChunk",
    "Split", "StoredArtifact", "Written", "csv_cells",
]  # fmt: skip
