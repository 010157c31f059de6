"""API keys: made once, stored as a SHA-256 hash, presented as ``Authorization: Bearer KEY``.

A key is 256 random bits, so one unsalted SHA-256 is as strong as a password hash would be and
lets the key be found by an index lookup; the stored hash is then compared in constant time.
A key has scopes (``submit``, ``read``, ``admin``) and an owner: every job, file and batch
belongs to the owner of the key that made it, and a key of another owner gets 404 for it, as if
it did not exist. ``admin`` sees every owner's jobs, files and batches, and the workers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sluice.api.errors import Forbidden, Unauthenticated
from sluice.errors import ValidationError

SCOPES = ("submit", "read", "admin")
KEY_PREFIX = "sk-sluice-"

bearer = HTTPBearer(auto_error=False, description="An API key from `sluice keys create`.")


def new_key() -> str:
    """A fresh key: a recognisable prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scopes(raw: str) -> list[str]:
    """``submit,read[,admin]`` as a list; a :class:`ValidationError` naming an unknown scope."""
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValidationError(f"scopes must be some of {', '.join(SCOPES)}; got {raw!r}")
    return scopes


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's owner and scopes (``owner`` None with --no-auth, where all is allowed)."""

    owner: str | None
    scopes: frozenset[str]
    key_name: str | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def sees(self) -> str | None:
        """The owner whose things this caller may see; None: everyone's (admin)."""
        return None if self.admin else self.owner

    def may_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.owner

    def require(self, scope: str) -> None:
        if scope not in self.scopes and not self.admin:
            have = ", ".join(sorted(self.scopes)) or "none"
            raise Forbidden(f"this API key lacks the {scope!r} scope (it has: {have})")


ANONYMOUS_ADMIN = Principal(owner=None, scopes=frozenset(SCOPES))


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller of ``request``; :class:`Unauthenticated` without a valid, unrevoked key."""
    ctx = request.app.state.ctx
    if ctx.no_auth:
        return ANONYMOUS_ADMIN
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>` (`sluice keys create` makes one)")
    digest = key_hash(credentials.credentials)
    found = ctx.ledger.key_for_hash(digest)
    if found is None or not hmac.compare_digest(found[1], digest):
        raise Unauthenticated("invalid or revoked API key")
    info = found[0]
    return Principal(owner=info.owner, scopes=frozenset(info.scopes), key_name=info.name)


def require(scope: str) -> Callable[..., Principal]:
    """A FastAPI dependency: the authenticated caller, who must hold ``scope``."""

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        who = authenticate(request, credentials)
        who.require(scope)
        return who

    return dependency


#: route parameters: the caller, holding the scope named
Reader = Annotated[Principal, Depends(require("read"))]
Submitter = Annotated[Principal, Depends(require("submit"))]
Admin = Annotated[Principal, Depends(require("admin"))]
