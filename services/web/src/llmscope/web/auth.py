"""What the dashboard needs from authentication: scopes, sessions, and the CSRF rule.

Three keys, three scopes: ``admin`` (``LLMSCOPE_API_KEY``: everything), ``read`` (GET routes
and the dashboard's pages, no changes) and ``ingest`` (``POST /api/stats`` and the OTLP
receiver, nothing else). A dashboard login with the admin or the read key gets a session of that
scope. A cookie-authenticated change needs the admin scope; an ``Origin`` naming another site,
or ``null``, is refused; and it needs the session's CSRF token (``X-CSRF-Token``, which every htmx
request sends from ``hx-headers`` on the page's body) or a same-origin ``Origin`` (or, without
one, ``Referer``). A request with neither is refused: SameSite is no longer the only defence.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "llmscope_session"
CSRF_HEADER = "X-CSRF-Token"

Scope = Literal["admin", "read", "ingest"]
SCOPES: tuple[Scope, ...] = ("admin", "read", "ingest")
# The variable holding each scope's key.
SCOPE_KEYS: dict[Scope, str] = {
    "admin": "LLMSCOPE_API_KEY",
    "read": "LLMSCOPE_READ_KEY",
    "ingest": "LLMSCOPE_INGEST_KEY",
}


def grants(have: Scope, need: Scope) -> bool:
    """The admin scope grants every other; read and ingest grant only themselves."""
    return have == "admin" or have == need


def keys_granting(need: Scope, configured: Collection[Scope]) -> str:
    """The variables of the configured keys that grant ``need``, named in every 401 and 403 so
    the caller knows what to send: ``LLMSCOPE_READ_KEY or LLMSCOPE_API_KEY`` only where a read key
    is set; without one, ``LLMSCOPE_API_KEY`` alone (the admin key is always set)."""
    names = [SCOPE_KEYS[need]] if need != "admin" and need in configured else []
    return " or ".join([*names, SCOPE_KEYS["admin"]])


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard login, as its signed cookie says (and not revoked since)."""

    id: str
    scope: Scope
    expires: int
    """Unix seconds."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: a bearer key's scope, or a session (``session`` set)."""

    scope: Scope
    session: Session | None = None


class RateLimited(Exception):
    """Too many failed authentications from this client: answer 429 with ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed authentications: retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class AuthUnavailable(Exception):
    """The session revocation list cannot be read (database away): answer 503, never guess."""


class Authenticator(Protocol):
    """Checks keys (counting failures per client) and issues, checks and revokes sessions."""

    configured: frozenset[Scope]
    """The scopes that have a key (admin always)."""

    def key_scope(self, candidate: str, client: str) -> Scope | None:
        """The scope of a key; None (a counted failure) for no key of ours; raises RateLimited."""
        ...

    def issue_session(self, scope: Scope) -> str: ...

    async def session(self, token: str | None) -> Session | None:
        """The session of a cookie: signed by us, unexpired and not logged out."""
        ...

    async def revoke(self, session: Session) -> None: ...

    async def principal(self, request: Request) -> Principal | None:
        """The bearer key's scope or else the cookie's session; None for neither."""
        ...

    def csrf_token(self, session: Session) -> str: ...


def client_of(request: Request) -> str:
    """The peer address that failed authentications are counted against."""
    return request.client.host if request.client else "unknown"


def _names_this_host(url: str, request: Request) -> bool:
    host = request.headers.get("host")
    return bool(host) and url != "null" and urlsplit(url).netloc == host


def same_origin(request: Request) -> bool:
    """Strict: an ``Origin`` (or, without one, a ``Referer``) naming this host; missing or ``null`` fails."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    return bool(origin) and _names_this_host(origin or "", request)


def change_refusal(auth: Authenticator, session: Session, request: Request) -> str | None:
    """Why a cookie-authenticated change is refused (a 403), or None when it may go on."""
    origin = request.headers.get("origin")
    sent = request.headers.get(CSRF_HEADER, "")
    token_ok = bool(sent) and hmac.compare_digest(sent.encode(), auth.csrf_token(session).encode())
    # A browser names the page's origin on every POST: one that names another site (or "null", a
    # sandboxed frame or a data: URL) is refused whatever else is sent; without one, the token or
    # a same-origin Referer is needed.
    foreign = origin is not None and not _names_this_host(origin, request)
    if foreign or not (token_ok or same_origin(request)):
        return "cross-site request refused: no valid CSRF token and no same-origin Origin or Referer"
    if request.url.path != "/logout" and not grants(session.scope, "admin"):
        return f"this session's scope is '{session.scope}'; changes need 'admin' ({SCOPE_KEYS['admin']})"
    return None
