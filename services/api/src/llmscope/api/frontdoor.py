"""The front door: who may send a body, and how big it may be, decided before any of it is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, the auth check
among them, and Starlette reads a body of any size into memory: one anonymous 48 MB JSON body
took the process to 1.26 GB. This ASGI middleware runs first:

- a changing request (anything but GET, HEAD, OPTIONS) needs its credential before its body is
  read: the API key as a bearer token under ``/api``, the dashboard's session cookie elsewhere
  (``/login`` and ``/logout`` excepted); the route's own check still runs afterwards; under
  ``/v1/`` (the OTLP receiver) only the ingest key, and a 404 when the receiver is off;
- a body over ``max_body_bytes`` is refused with 413: at once when ``Content-Length`` says so,
  or as soon as a streamed (chunked) body passes the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmscope.api.auth import IngestKeyAuth
from llmscope.web.data import Authenticator
from llmscope.web.routes import SESSION_COOKIE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_WRITES = frozenset({"/login", "/logout"})
OTLP_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises it as is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (LLMSCOPE_MAX_BODY_BYTES)")


class FrontDoor:
    """Auth before the body, and a cap on the body's size (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, auth: Authenticator, max_body_bytes: int, ingest: IngestKeyAuth | None = None
    ) -> None:
        self.app = app
        self.auth = auth
        self.ingest = ingest
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers and cookies only: nothing is received here
        refused = self._refuse(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        await self.app(scope, self._capped(receive), send)

    def _refuse(self, request: Request) -> Response | None:
        if request.url.path.startswith(OTLP_PREFIX):
            return self._refuse_ingest(request)
        if request.method in SAFE_METHODS or request.url.path in OPEN_WRITES:
            return None
        if request.url.path.startswith("/api/"):
            if self.auth.allows(request):
                return None
            return JSONResponse(
                {"detail": "missing or invalid API key: send 'Authorization: Bearer <LLMSCOPE_API_KEY>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if self.auth.allows(request) or self.auth.check_session(request.cookies.get(SESSION_COOKIE)):
            return None
        if request.headers.get("hx-request") == "true":
            return PlainTextResponse("login required", status_code=401, headers={"HX-Redirect": "/login"})
        return PlainTextResponse("login required", status_code=303, headers={"Location": "/login"})

    def _refuse_ingest(self, request: Request) -> Response | None:
        if self.ingest is None:
            return JSONResponse(
                {"detail": "the OTLP receiver is off: set LLMSCOPE_OTLP_INGEST_KEY"}, status_code=404
            )
        if self.ingest.allows(request):
            return None
        return JSONResponse(
            {"detail": "missing or invalid key: send 'Authorization: Bearer <LLMSCOPE_OTLP_INGEST_KEY>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _too_large(self) -> Response:
        return JSONResponse(
            {"detail": f"request body over {self.limit} bytes (LLMSCOPE_MAX_BODY_BYTES)"}, status_code=413
        )

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return capped
