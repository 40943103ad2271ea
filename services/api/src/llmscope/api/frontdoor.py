"""The front door: who may send a request, and how big its body may be, decided before any is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, the auth check
among them, and Starlette reads a body of any size into memory: one anonymous 48 MB JSON body
took the process to 1.26 GB. This ASGI middleware runs first:

- under ``/api`` and ``/v1`` (the OTLP receiver) every request needs a key of the route's scope
  (:func:`~llmscope.api.auth.needed_scope`): 401 without one, 403 naming the scope needed when
  the key's is another; the dashboard's cookie opens reads only; ``/v1`` answers 404 while the
  receiver is off; ``GET /api/status`` answers anonymous readers itself (a public status page);
- a dashboard change (anything but GET, HEAD, OPTIONS; ``/login`` excepted) needs the session
  cookie, the admin scope and the CSRF token or a strict same-origin ``Origin``
  (:func:`~llmscope.web.auth.change_refusal`), before its form is read;
- a client with too many failed authentications gets 429 with ``Retry-After``; a session that
  cannot be checked (database away) 503;
- a NUL character in the path or a query parameter is 422 naming it (Postgres text cannot hold
  one: it was a 500 from the query that tried);
- a body over ``max_body_bytes`` is refused with 413: at once when ``Content-Length`` says so,
  or as soon as a streamed (chunked) body passes the limit.

Once a request has passed all that, a route may have a *lane* here (``lanes``): the front door
reads the body and the lane answers it, without FastAPI's routing, dependencies and response
handling (``POST /api/stats``, :func:`~llmscope.api.routes.stats.front_door_lane`); a lane that
returns None hands the request on to the route with its body as read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmscope.api.auth import SAFE_METHODS, refusal, url_path
from llmscope.api.methods import MethodCheck
from llmscope.api.unavailable import unavailable_response
from llmscope.web.auth import Authenticator, AuthUnavailable, RateLimited, change_refusal

OPEN_WRITES = frozenset({"/login"})
OTLP_PREFIX = "/v1/"

Lane = Callable[[bytes, Headers], Awaitable[Response | None]]
"""A route's answer from the front door: the request's body and headers in, the response out
(None: let the route answer)."""


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises it as is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (LLMSCOPE_MAX_BODY_BYTES)")


def rate_limited(exc: RateLimited) -> Response:
    return JSONResponse(
        {"detail": f"{exc}; LLMSCOPE_AUTH_FAILURES"},
        status_code=429,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def unavailable(request: Request, exc: AuthUnavailable) -> Response:
    """503 + Retry-After: JSON for the API, a page that retries by itself for the dashboard."""
    return unavailable_response(request, f"cannot check the session now ({exc})")


def _nul_in(request: Request) -> Response | None:
    scope = request.scope
    query: bytes = scope.get("query_string", b"")
    # Nearly every request has none: skip building the URL and parsing the query for it. A NUL
    # reaches the decoded path or the query only as itself or percent-encoded.
    if "\x00" not in scope["path"] and b"\x00" not in query and b"%00" not in query:
        return None
    where: list[str] | None = None
    if "\x00" in request.url.path:
        where = ["path"]
    else:
        where = next((["query", k] for k, v in request.query_params.multi_items() if "\x00" in k + v), None)
    if where is None:
        return None
    detail = {
        "loc": where,
        "field": where[-1],
        "msg": "a NUL character is not allowed",
        "type": "value_error",
    }
    return JSONResponse({"detail": [detail]}, status_code=422)


class FrontDoor:
    """Auth before the body, and a cap on the body's size (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator,
        max_body_bytes: int,
        receiver_on: bool = False,
        routes: Sequence[BaseRoute] = (),
        lanes: Mapping[tuple[str, str], Lane] | None = None,
    ) -> None:
        """``lanes``: by (method, path), exact; the route of that method and path must be among
        ``routes`` (the request's ``route`` in the scope, as the router sets it, names it in the
        metrics)."""
        self.app = app
        self.wrong_method = MethodCheck(routes)
        self.lanes = dict(lanes or {})
        self._routes = routes
        self._lane_routes: dict[tuple[str, str], BaseRoute | None] = {}
        self.auth = auth
        self.receiver_on = receiver_on
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers and cookies only: nothing is received here
        nul = _nul_in(request)
        if nul is not None:
            await nul(scope, receive, send)
            return
        try:
            refused = await self._refuse(request, scope)
        except RateLimited as exc:
            refused = rate_limited(exc)
        except AuthUnavailable as exc:
            refused = unavailable(request, exc)
        if refused is not None:
            await refused(scope, receive, send)
            return
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        if self.lanes and length.isdigit() and not scope.get("query_string") and not scope.get("root_path"):
            lane = self.lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                await self._lane(lane, scope, receive, send)
                return
        await self.app(scope, self._capped(receive), send)

    async def _lane(self, lane: Lane, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (its Content-Length is within the limit: the server reads no more), let
        the lane answer, or hand the request on with the body as read."""
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left: nothing to answer (the route would end the same way)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        answer = await lane(body, Headers(scope=scope))
        if answer is None:
            given = False

            async def replay() -> Message:
                nonlocal given
                if given:
                    return await receive()
                given = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        scope["route"] = self._lane_route(scope["method"], scope["path"])
        await answer(scope, receive, send)

    def _lane_route(self, method: str, path: str) -> BaseRoute | None:
        """The route the router would have chosen (FastAPI >= 0.137 keeps an included router's
        routes behind one route: its public walk gives each with its full path)."""
        key = (method, path)
        if key not in self._lane_routes:
            self._lane_routes[key] = next(
                (
                    ctx.original_route
                    for ctx in iter_route_contexts(self._routes)
                    if ctx.path == path and method in (ctx.methods or ())
                ),
                None,
            )
        return self._lane_routes[key]

    async def _refuse(self, request: Request, scope: Scope) -> Response | None:
        path, method = url_path(request), request.method
        if path.startswith(OTLP_PREFIX) and not self.receiver_on:
            return JSONResponse(
                {"detail": "the OTLP receiver is off: set LLMSCOPE_INGEST_KEY"}, status_code=404
            )
        if path.startswith(("/api/", OTLP_PREFIX)):
            principal = await self.auth.principal(request)
            if path == "/api/status" and method in SAFE_METHODS:
                return None  # public or not, the route decides what an anonymous reader sees
            refused = refusal(principal, method, path, self.auth.configured)
            if refused is None:
                return self.wrong_method(scope)
            status, detail = refused
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        wrong = self.wrong_method(scope)
        if wrong is not None:
            return wrong  # before the session check: TRACE /healthz was redirected to the login
        if method in SAFE_METHODS or path in OPEN_WRITES:
            return None  # the pages' own session check sends an anonymous reader to the login
        principal = await self.auth.principal(request)
        session = principal.session if principal is not None else None
        if session is None:
            if path == "/logout":
                return None  # nothing to end: the route clears the cookie
            if request.headers.get("hx-request") == "true":
                return PlainTextResponse("login required", status_code=401, headers={"HX-Redirect": "/login"})
            return PlainTextResponse("login required", status_code=303, headers={"Location": "/login"})
        why = change_refusal(self.auth, session, request)
        return None if why is None else PlainTextResponse(why, status_code=403)

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
