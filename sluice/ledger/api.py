"""The HTTP API's side of the ledger: API keys, and files stored in the database in parts.

Only a key's SHA-256 is stored. A file's bytes live in ``file_parts`` rows of about a MiB, written
one short transaction per part as an upload streams in (so a slow upload never holds a write
lock that workers wait on, and no process holds a whole file in memory); the file is ``uploading``,
invisible, until its last part is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, inspect, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from sluice.clock import utcnow
from sluice.db import api_keys_table, file_parts_table, files_table
from sluice.ledger.base import LedgerBase

keys = api_keys_table
files = files_table
parts = file_parts_table

UPLOADING = "uploading"
PROCESSED = "processed"


@dataclass(frozen=True)
class KeyInfo:
    """An API key as stored (never the key itself)."""

    name: str
    owner: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class FileInfo:
    """A stored file: uploaded (its parts hold the bytes) or a batch's generated output (``batch_id``)."""

    id: str
    owner: str | None
    purpose: str
    filename: str
    bytes: int
    lines: int
    status: str
    created_at: datetime
    batch_id: str | None = None
    kind: str | None = None


def _key(row: Any) -> KeyInfo:
    return KeyInfo(row.name, row.owner, row.prefix, tuple(row.scopes or ()), row.created_at, row.revoked_at)


def _file(row: Any) -> FileInfo:
    return FileInfo(**{name: getattr(row, name) for name in FileInfo.__dataclass_fields__})


class ApiLedger(LedgerBase):
    def ping(self) -> None:
        """One round trip to the database (readiness); raises DatabaseUnavailableError when it is down."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def has_api_tables(self) -> bool:
        """Whether the database is migrated far enough for the API (``sluice db upgrade``)."""
        return bool(inspect(self.engine).has_table("batches"))

    # keys -----------------------------------------------------------------------------------
    def create_key(self, name: str, owner: str, key_hash: str, prefix: str, scopes: list[str]) -> bool:
        """Store a key's hash; False when a key with this name (revoked or not) already exists."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(keys).values(name=name, owner=owner, key_hash=key_hash, prefix=prefix,
                                                 scopes=scopes, created_at=utcnow()))  # fmt: skip
        except IntegrityError:
            return False
        return True

    def api_keys(self) -> list[KeyInfo]:
        with self.engine.connect() as conn:
            return [_key(r) for r in conn.execute(select(keys).order_by(keys.c.created_at))]

    def revoke_key(self, name: str) -> bool:
        """Revoke the named key; False when there is no such key still active."""
        with self.engine.begin() as conn:
            res = conn.execute(update(keys).where(keys.c.name == name, keys.c.revoked_at.is_(None))
                               .values(revoked_at=utcnow()))  # fmt: skip
        return bool(res.rowcount)

    def key_for_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        """The active key with this hash and the stored hash (for a constant-time compare), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(keys).where(keys.c.key_hash == key_hash, keys.c.revoked_at.is_(None))).first()
        return None if row is None else (_key(row), row.key_hash)

    def active_keys(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(keys.c.revoked_at.is_(None))).scalar_one())

    # files ----------------------------------------------------------------------------------
    def begin_file(self, file_id: str, owner: str | None, filename: str) -> None:
        """An upload's row, invisible (``uploading``) until :meth:`finish_file`."""
        with self.engine.begin() as conn:
            conn.execute(insert(files).values(id=file_id, owner=owner, purpose="", filename=filename[:255], bytes=0,
                                              lines=0, status=UPLOADING, created_at=utcnow()))  # fmt: skip

    def add_file_part(self, file_id: str, idx: int, data: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(parts).values(file_id=file_id, idx=idx, data=data))

    def finish_file(self, file_id: str, purpose: str, filename: str, size: int, lines: int) -> FileInfo:
        """Mark an upload complete with what it turned out to be; returns the stored file."""
        with self.engine.begin() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(
                purpose=purpose, filename=filename[:255], bytes=size, lines=lines, status=PROCESSED))  # fmt: skip
            return _file(conn.execute(select(files).where(files.c.id == file_id)).one())

    def add_generated_file(self, conn: Any, info: FileInfo) -> None:
        """Record a batch's output or error file (no parts: its content is generated when read)."""
        conn.execute(insert(files).values(**info.__dict__))

    def delete_file(self, file_id: str) -> bool:
        """Delete a file and its parts; False when it did not exist."""
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(files).where(files.c.id == file_id)).rowcount)

    def purge_uploads(self, before: datetime) -> int:
        """Delete uploads that never finished (their process died) and started before ``before``."""
        with self.engine.begin() as conn:
            stale = delete(files).where(files.c.status == UPLOADING, files.c.created_at < before)
            return int(conn.execute(stale).rowcount)

    def file(self, file_id: str) -> FileInfo | None:
        """A finished file (an upload still arriving is not one yet)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id, files.c.status == PROCESSED)).one_or_none()
        return None if row is None else _file(row)

    def files_page(
        self, owner: str | None, purpose: str | None, after: str | None, limit: int, ascending: bool = False
    ) -> list[FileInfo]:
        """Finished files by creation time, ``limit`` after file ``after``; ``owner``'s only unless None."""
        query = select(files).where(files.c.status == PROCESSED)
        if owner is not None:
            query = query.where(files.c.owner == owner)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        order = (files.c.created_at, files.c.id) if ascending else (files.c.created_at.desc(), files.c.id.desc())
        with self.engine.connect() as conn:
            if after is not None:
                cursor = conn.execute(select(files.c.created_at, files.c.id).where(files.c.id == after)).one_or_none()
                if cursor is None:
                    return []
                key = (files.c.created_at, files.c.id)
                query = query.where(beyond(key, (cursor.created_at, cursor.id), ascending))
            return [_file(r) for r in conn.execute(query.order_by(*order).limit(limit))]

    def file_parts(self, file_id: str) -> Iterator[bytes]:
        """An uploaded file's bytes, one part at a time, in order."""
        query = select(parts.c.data).where(parts.c.file_id == file_id).order_by(parts.c.idx)
        with self.engine.connect().execution_options(yield_per=2) as conn:
            for row in conn.execute(query):
                yield bytes(row.data)


def beyond(columns: tuple[Any, Any], values: tuple[Any, Any], ascending: bool) -> Any:
    """Rows after ``values`` in (created_at, id) order: a keyset cursor that survives equal timestamps."""
    (at, ident), (at_v, ident_v) = columns, values
    if ascending:
        return or_(at > at_v, and_(at == at_v, ident > ident_v))
    return or_(at < at_v, and_(at == at_v, ident < ident_v))
