"""Artifacts: an item's binary results (depth maps, masks, audio), in their own table.

They are written by :func:`write_artifacts` in the transaction that writes the items' rows, and
only for the rows that write actually changed (items still pending), so a redelivered chunk adds
none twice. Reads never join them into the items query: a results page gets a summary of its
items' artifacts (media type, size, name) in one query per page (:func:`summaries`), and the
bytes come only from :meth:`ArtifactsLedger.artifacts`, streamed a few at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, insert, select

from sluice.db import ARTIFACT_NAME_CHARS, artifacts_table
from sluice.families.base import Artifact
from sluice.ledger.base import LedgerBase

artifacts = artifacts_table

#: Artifacts fetched per round trip when streaming bytes: a few, since one may be megabytes.
_STREAM_BATCH = 8

#: (job id, item) of a result row
ItemKey = tuple[str, int]


class StoredArtifact(NamedTuple):
    """One stored artifact, as the client yields it."""

    item: int
    n: int
    name: str | None
    media_type: str
    data: bytes


def artifact_rows(job_id: str, item: int, found: list[Artifact]) -> list[dict[str, Any]]:
    """Insert parameters of one item's artifacts, numbered in the order the family gave them."""
    return [
        {"job_id": job_id, "item": item, "n": n, "media_type": a.media_type,
         "name": None if a.name is None else a.name[:ARTIFACT_NAME_CHARS], "data": bytes(a.data)}
        for n, a in enumerate(found)
    ]  # fmt: skip


def write_artifacts(conn: Connection, pending: dict[ItemKey, list[Artifact]], written: set[ItemKey]) -> int:
    """Insert the artifacts of the items whose rows were just ``written``; how many."""
    rows = [row for key, found in pending.items() if key in written for row in artifact_rows(*key, found)]
    if rows:
        conn.execute(insert(artifacts), rows)
    return len(rows)


def summaries(conn: Connection, job_id: str, first: int, last: int) -> dict[int, list[dict[str, Any]]]:
    """The artifacts of items ``first..last`` of a job without their bytes: ``n``, ``media_type``,
    ``bytes`` (the size) and ``name``, by item. One query; the size is read, never the data."""
    query = (
        select(artifacts.c.item, artifacts.c.n, artifacts.c.media_type, artifacts.c.name,
               func.length(artifacts.c.data).label("size"))
        .where(artifacts.c.job_id == job_id, artifacts.c.item.between(first, last))
        .order_by(artifacts.c.item, artifacts.c.n)
    )  # fmt: skip
    found: dict[int, list[dict[str, Any]]] = {}
    for row in conn.execute(query):
        entry = {"n": row.n, "media_type": row.media_type, "bytes": int(row.size), "name": row.name}
        found.setdefault(row.item, []).append(entry)
    return found


def with_summaries(conn: Connection, job_id: str, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page of result rows (in item order), each with an item's ``artifacts`` summary where it has any."""
    if page:
        found = summaries(conn, job_id, page[0]["item"], page[-1]["item"])
        for row in page:
            if row["item"] in found:
                row["artifacts"] = found[row["item"]]
    return page


class ArtifactsLedger(LedgerBase):
    def artifacts(self, job_id: str, item: int | None = None) -> Iterator[StoredArtifact]:
        """A job's artifacts (or one item's) with their bytes, in item order, streamed a few at a time."""
        query = select(artifacts.c.item, artifacts.c.n, artifacts.c.name, artifacts.c.media_type, artifacts.c.data)
        query = query.where(artifacts.c.job_id == job_id)
        if item is not None:
            query = query.where(artifacts.c.item == item)
        with self.engine.connect().execution_options(yield_per=_STREAM_BATCH) as conn:
            for row in conn.execute(query.order_by(artifacts.c.item, artifacts.c.n)):
                yield StoredArtifact(row.item, row.n, row.name, row.media_type, bytes(row.data))

    def artifact(self, job_id: str, item: int, n: int) -> StoredArtifact | None:
        """One artifact with its bytes: item ``item``'s ``n``-th (as numbered in its result row's summary)."""
        query = select(artifacts.c.item, artifacts.c.n, artifacts.c.name, artifacts.c.media_type, artifacts.c.data)
        query = query.where(artifacts.c.job_id == job_id, artifacts.c.item == item, artifacts.c.n == n)
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else StoredArtifact(row.item, row.n, row.name, row.media_type, bytes(row.data))
