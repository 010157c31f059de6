"""Limits with clear errors: request body size (413), items per job (413), and unfinished items
queued per owner (429 with Retry-After).

The body limit is an ASGI middleware that counts bytes as they arrive (a missing or lying
``Content-Length`` changes nothing), so no request is ever read past its limit. File uploads
(``POST /v1/files``) have their own, larger limit, checked by the upload as it streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.api.errors import PayloadTooLarge, TooManyRequests, error_response
from sluice.settings import Settings

T = TypeVar("T")
UPLOAD_PATH = "/v1/files"


class BodyLimit:
    """Refuse request bodies over ``settings.api_max_body_bytes`` (uploads: ``api_max_file_bytes``
    plus room for the multipart framing) with a 413 in the route's error shape."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, path: str) -> int:
        if path == UPLOAD_PATH:
            return self.settings.api_max_file_bytes + 2**20
        return self.settings.api_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(too_large(limit))
            return message

        await self.app(scope, counting, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(scope["path"], 413, PayloadTooLarge.kind, too_large(limit))
        await response(scope, receive, send)


def too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit:,} bytes; split it into smaller requests"


def capped(items: Iterable[T], max_items: int, room: int, retry_after: int) -> Iterator[T]:
    """``items``, raising :class:`PayloadTooLarge` past ``max_items`` and :class:`TooManyRequests`
    past ``room`` (what the owner may still queue) while they are read, so a file is never read
    further than the limits allow (and the job's transaction rolls back)."""
    for n, item in enumerate(items, start=1):
        if n > max_items:
            raise PayloadTooLarge(too_many_items(max_items))
        if n > room:
            raise queue_full(room, retry_after)
        yield item


def too_many_items(limit: int) -> str:
    return f"a job may hold at most {limit:,} items (SLUICE_API_MAX_JOB_ITEMS); split the input"


def queue_full(room: int, retry_after: int) -> TooManyRequests:
    return TooManyRequests(
        f"too many unfinished items queued for this owner: room for {max(room, 0):,} more "
        "(SLUICE_API_MAX_QUEUED_ITEMS); retry when some of your jobs have finished",
        retry_after,
    )


def queue_room(ledger: Any, owner: str | None, settings: Settings) -> int:
    """How many more items ``owner`` may queue now."""
    return settings.api_max_queued_items - int(ledger.queued_items(owner))


def check_room(ledger: Any, owner: str | None, adding: int, settings: Settings) -> None:
    """:class:`TooManyRequests` when ``adding`` items would take ``owner`` over its queue limit."""
    room = queue_room(ledger, owner, settings)
    if adding > room:
        raise queue_full(room, settings.api_retry_after)
