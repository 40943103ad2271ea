"""One credential, the API key: bearer tokens for the API, signed session cookies for the dashboard.

A session token is ``<expiry>.<hmac-sha256(key, expiry)>``: stateless, so every replica accepts
it, and changing the key logs every browser out. All comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

from llmscope.config.env import Secret
from llmscope.web.routes import SESSION_COOKIE


class KeyAuth:
    """Checks the API key and issues/validates session tokens (the web's ``Authenticator``)."""

    def __init__(self, key: Secret, *, session_s: float = 7 * 86400, clock: Callable[[], float] = time.time):
        self._key = key.get().encode()
        self._session_s = session_s
        self._clock = clock

    def check_key(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._key)

    def _sign(self, expiry: str) -> str:
        return hmac.new(self._key, f"llmscope-session:{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue_session(self) -> str:
        expiry = str(int(self._clock() + self._session_s))
        return f"{expiry}.{self._sign(expiry)}"

    def check_session(self, token: str | None) -> bool:
        if not token or "." not in token:
            return False
        expiry, sig = token.split(".", 1)
        if not expiry.isdigit() or not hmac.compare_digest(sig, self._sign(expiry)):
            return False
        return int(expiry) > self._clock()

    def allows(self, request: Request) -> bool:
        """``Authorization: Bearer <key>``, or the session cookie on reads."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token and self.check_key(token.strip()):
            return True
        # The cookie is SameSite=Strict; still, only safe methods may ride on it (no CSRF).
        return request.method in ("GET", "HEAD") and self.check_session(request.cookies.get(SESSION_COOKIE))

    def demand(self, request: Request) -> None:
        """:meth:`allows`, or a 401."""
        if self.allows(request):
            return
        raise HTTPException(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <LLMSCOPE_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def require(self, request: Request) -> None:
        """FastAPI dependency: :meth:`demand`.

        A coroutine on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
        thread hop per request that cost as much as the ``POST /api/stats`` handler itself."""
        self.demand(request)


class IngestKeyAuth:
    """The OTLP receiver's credential: ``Authorization: Bearer <LLMSCOPE_OTLP_INGEST_KEY>``.

    Scoped on purpose: it sits in every instrumented application's exporter configuration, so it
    opens the receiver and nothing else, and the API key does not open the receiver."""

    def __init__(self, key: Secret) -> None:
        self._key = key.get().encode()

    def allows(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)
