"""Artifacts as files: what ``sluice results JOB --artifacts DIR`` writes beside the rows.

Each artifact of an item becomes ``DIR/<item>.<ext>`` (an item with one artifact) or
``DIR/<item>-<n>.<ext>`` (several), the extension from its media type; its entry in the row's
``artifacts`` summary gains ``path``, the file's name relative to ``DIR``. The rows and the bytes
are two streams in item order, merged as they go, so neither a job's rows nor its artifacts are
held in memory.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sluice.ledger import StoredArtifact

#: Extensions of the media types Sluice's families write; others ask :mod:`mimetypes`, else ``bin``.
EXTENSIONS = {
    "image/png": "png", "image/jpeg": "jpg", "application/x-npy": "npy", "audio/wav": "wav", "audio/x-wav": "wav",
    "audio/flac": "flac", "application/json": "json",
}  # fmt: skip


def extension(media_type: str) -> str:
    """The file extension (without the dot) for ``media_type``."""
    known = EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type)
    return (known or "bin").lstrip(".")


def file_name(item: int, n: int, count: int, media_type: str) -> str:
    """``<item>.<ext>`` for an item's only artifact, ``<item>-<n>.<ext>`` for one of several."""
    stem = str(item) if count == 1 else f"{item}-{n}"
    return f"{stem}.{extension(media_type)}"


def with_artifact_files(
    rows: Iterable[dict[str, Any]], stored: Iterable[StoredArtifact], directory: Path
) -> Iterator[dict[str, Any]]:
    """The rows as they go by, each artifact of theirs written under ``directory`` and its ``path`` set.

    ``stored`` may hold artifacts of items that are not in ``rows`` (filtered out, or written
    after their rows were read): those are skipped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    source = iter(stored)
    head = next(source, None)
    for row in rows:
        summary = row.get("artifacts") or []
        wanted = {entry["n"]: entry for entry in summary}
        while head is not None and head.item < row["item"]:
            head = next(source, None)
        while head is not None and head.item == row["item"]:
            entry = wanted.get(head.n)
            if entry is not None:
                entry["path"] = file_name(head.item, head.n, len(summary), head.media_type)
                (directory / entry["path"]).write_bytes(head.data)
            head = next(source, None)
        yield row
