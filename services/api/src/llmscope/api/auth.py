"""Scoped keys, rate-limited failures, revocable sessions: the API's :class:`Authenticator`.

Keys: ``LLMSCOPE_API_KEY`` (admin), ``LLMSCOPE_READ_KEY`` (read) and ``LLMSCOPE_INGEST_KEY``
(ingest), each compared in constant time, all of them on every check. Which scope a route needs
is :func:`needed_scope`; :func:`refusal` says what to answer when the caller's is not enough.

A session token is ``<id>.<scope>.<expiry>.<hmac>``, signed with the API key over a fingerprint
of its scope's key too: changing either key logs those browsers out. It is accepted by every
replica, survives restarts, and stops working at logout (:class:`RevokedSessions`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping

from fastapi import HTTPException, Request

from llmscope.api.ratelimit import FailureLimiter
from llmscope.api.sessions import RevokedSessions
from llmscope.config.env import Secret
from llmscope.web.auth import (
    SCOPES,
    SESSION_COOKIE,
    Principal,
    RateLimited,
    Scope,
    Session,
    client_of,
    grants,
    keys_granting,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Characters a decoded path may hold that ``request.url.path`` gives back unchanged (a leading
# "//" it escapes when the request has no Host).
_PLAIN_PATH = re.compile(r"/(?!/)[A-Za-z0-9/_.~:@!$&'()*+,;=-]*")
_PRINCIPAL = "llmscope_principal"  # request.state: identified once, by the front door


def url_path(request: Request) -> str:
    """``request.url.path``, without building the whole URL when the path is plain ASCII.

    Starlette builds and splits the URL (host, query and all) for ``request.url``: done by the
    front door and again by each route's auth check, that was a measurable part of a one-event
    ``POST /api/stats``. The URL's path differs from the scope's only for what it escapes
    (``?``, ``#``, ``\\``, a leading ``//``) or what URL splitting strips (spaces, tabs,
    controls): such a path takes the URL."""
    path: str = request.scope["path"]
    return path if _PLAIN_PATH.fullmatch(path) else request.url.path


def needed_scope(method: str, path: str) -> Scope | None:
    """The scope a route needs; None outside ``/api`` and ``/v1`` (the dashboard's own rules)."""
    if path.startswith("/v1/") or (path == "/api/stats" and method == "POST"):
        return "ingest"
    if path.startswith("/api/"):
        return "read" if method in SAFE_METHODS else "admin"
    return None


def refusal(
    principal: Principal | None, method: str, path: str, configured: Collection[Scope]
) -> tuple[int, str] | None:
    """(status, detail) when ``principal`` may not call the route, else None; the detail names the
    variables of the ``configured`` keys that would be let in."""
    need = needed_scope(method, path)
    if need is None:
        return None
    # The dashboard's cookie reads the API but never changes anything through it: changes from
    # the dashboard go through its own routes, which check the CSRF token.
    if principal is not None and principal.session is not None and method not in SAFE_METHODS:
        principal = None
    if principal is None:
        return (
            401,
            f"missing or invalid API key: send 'Authorization: Bearer <{keys_granting(need, configured)}>'",
        )
    if not grants(principal.scope, need):
        return 403, (
            f"this key's scope is '{principal.scope}'; {method} {path} needs scope '{need}' "
            f"({keys_granting(need, configured)})"
        )
    return None


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class KeyAuth:
    """Checks keys and issues/validates/revokes session tokens (the web's ``Authenticator``)."""

    def __init__(
        self,
        keys: Mapping[Scope, Secret],
        *,
        revoked: RevokedSessions,
        limiter: FailureLimiter,
        session_s: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ):
        admin = keys["admin"].get().encode()
        self._keys = [(scope, keys[scope].get().encode()) for scope in SCOPES if keys.get(scope)]
        self.configured = frozenset(scope for scope, _ in self._keys)
        self._sign_key = admin
        self._fingerprints = {scope: _fingerprint(key) for scope, key in self._keys}
        self.revoked = revoked
        self.limiter = limiter
        self._session_s = session_s
        self._clock = clock

    # ---- keys ------------------------------------------------------------------------------
    def key_scope(self, candidate: str, client: str) -> Scope | None:
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise RateLimited(wait)
        sent = candidate.encode()
        found: Scope | None = None
        for scope, key in self._keys:  # every key, always: the time taken says nothing
            if hmac.compare_digest(sent, key):
                found = scope
        if found is None:
            self.limiter.fail(client)
        return found

    # ---- sessions --------------------------------------------------------------------------
    def _sign(self, body: str, scope: Scope) -> str:
        message = f"llmscope-session:{body}:{self._fingerprints[scope]}".encode()
        return hmac.new(self._sign_key, message, hashlib.sha256).hexdigest()

    def issue_session(self, scope: Scope) -> str:
        body = f"{secrets.token_urlsafe(16)}.{scope}.{int(self._clock() + self._session_s)}"
        return f"{body}.{self._sign(body, scope)}"

    def _parse(self, token: str) -> Session | None:
        parts = token.split(".")
        if len(parts) != 4:
            return None
        sid, scope, expiry, sig = parts
        if scope not in self._fingerprints or scope == "ingest" or not expiry.isdigit():
            return None
        body = f"{sid}.{scope}.{expiry}"
        # As bytes: compare_digest raises on non-ASCII text, and a cookie is whatever was sent.
        if not hmac.compare_digest(sig.encode(), self._sign(body, scope).encode()):
            return None
        if int(expiry) <= self._clock():
            return None
        return Session(sid, scope, int(expiry))

    async def session(self, token: str | None) -> Session | None:
        found = self._parse(token) if token else None
        if found is None or await self.revoked.is_revoked(found.id):
            return None
        return found

    async def revoke(self, session: Session) -> None:
        await self.revoked.revoke(session.id, session.expires)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._sign_key, f"llmscope-csrf:{session.id}".encode(), hashlib.sha256).hexdigest()

    # ---- requests --------------------------------------------------------------------------
    async def principal(self, request: Request) -> Principal | None:
        """A bearer key's scope, else the session cookie's; computed once per request."""
        state = request.scope.setdefault("state", {})
        if _PRINCIPAL in state:
            cached: Principal | None = state[_PRINCIPAL]
            return cached
        found: Principal | None = None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            scope = self.key_scope(token.strip(), client_of(request))
            found = Principal(scope) if scope is not None else None
        else:
            session = await self.session(request.cookies.get(SESSION_COOKIE))
            found = Principal(session.scope, session) if session is not None else None
        state[_PRINCIPAL] = found
        return found

    async def require(self, request: Request) -> None:
        """FastAPI dependency: the route's scope (the front door checked it first already).

        A coroutine on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
        thread hop per request that cost as much as the ``POST /api/stats`` handler itself."""
        refused = refusal(await self.principal(request), request.method, url_path(request), self.configured)
        if refused is not None:
            status, detail = refused
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            raise HTTPException(status, detail, headers=headers)
