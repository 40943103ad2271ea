"""gzip for the answers that hold no secret, and only for those (BREACH).

BREACH reads a secret out of compressed answers that also reflect what an attacker chose (a
query string): the compressed length shrinks as a guess matches more of the secret. Pages carry
the session's CSRF token (``base.html``), so a page is never compressed. An answer is gzipped
only when all of these hold:

1. the client accepts gzip (``Accept-Encoding``, ``q`` above 0);
2. it is declared secret-free, by one explicit rule: its path is under a public prefix (static
   files, the OpenAPI document: the same bytes for everyone), or the route marked its request
   with :func:`mark_secret_free` (the JSON API's routers, whose answers never echo a key or a
   token; the dashboard's polled fragments, which never include ``base.html``);
3. a marked answer is whole (one body message) and does not hold the request's CSRF token all
   the same: a template change that put it there leaves the answer uncompressed and logs why;
4. it is a ``200`` of a text type (HTML, JSON, CSS, JavaScript, SVG, plain text), not a ``HEAD``,
   of at least ``minimum_size`` bytes, and nothing encoded it already.

Every answer that passes 2 and 4 says ``Vary: Accept-Encoding``, compressed or not, so a cache
keeps the two forms apart; a strong ``ETag`` of a compressed answer becomes weak (the bytes differ
from the identity form's).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmscope.config.logs import get_logger

log = get_logger("llmscope.web.compression")

# Where the marker lives: the request's ``state`` (``scope["state"]``), which the routes and
# this middleware share for one request.
SECRET_FREE: Final = "llmscope_secret_free"
CSRF_STATE: Final = "csrf_token"
PUBLIC_PREFIXES: Final = ("/static/", "/openapi.json")
COMPRESSIBLE_TYPES: Final = frozenset(
    {
        "text/html",
        "text/css",
        "text/plain",
        "text/csv",
        "text/javascript",
        "application/javascript",
        "application/json",
        "application/problem+json",
        "image/svg+xml",
    }
)
MINIMUM_SIZE: Final = 500
# zlib's default: within ~2 % of level 9's size on the dashboard's HTML for about half its CPU.
LEVEL: Final = 6
# Past this, the compression runs in a worker thread (a static bundle of a megabyte or more).
THREAD_MINIMUM: Final = 256 * 1024


def mark_secret_free(request: Request) -> None:
    """Declare this request's answer free of secrets: the middleware may gzip it."""
    request.state.llmscope_secret_free = True


async def secret_free(request: Request) -> None:
    """:func:`mark_secret_free` as a route or router dependency."""
    mark_secret_free(request)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` admits gzip: listed (or ``*``) with a ``q`` above 0."""
    star = False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q > 0
    return star


def add_vary(headers: MutableHeaders) -> None:
    vary = headers.get("vary", "")
    if "accept-encoding" not in vary.lower():
        headers.add_vary_header("Accept-Encoding")


def weaken(headers: MutableHeaders) -> None:
    """A strong tag names exact bytes; the gzip form's bytes are not the identity form's."""
    etag = headers.get("etag")
    if etag and not etag.startswith("W/"):
        headers["ETag"] = f"W/{etag}"


def is_public_path(path: str, prefixes: Iterable[str] = PUBLIC_PREFIXES) -> bool:
    return any(path.startswith(p) for p in prefixes)


class SecretFreeGZip:
    """ASGI middleware: gzip answers declared free of secrets (see the module's rule)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        public_prefixes: tuple[str, ...] = PUBLIC_PREFIXES,
        minimum_size: int = MINIMUM_SIZE,
        level: int = LEVEL,
    ) -> None:
        self.app = app
        self.public_prefixes = public_prefixes
        self.minimum_size = minimum_size
        self.level = level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        await _Responder(self, scope, send).run(receive)


class _Responder:
    """One answer: holds its start message until the first body says whether to compress."""

    def __init__(self, mw: SecretFreeGZip, scope: Scope, send: Send) -> None:
        self.mw = mw
        self.scope = scope
        self.send = send
        self.wants_gzip = accepts_gzip(Headers(scope=scope).get("accept-encoding", ""))
        self.public = is_public_path(scope["path"], mw.public_prefixes)
        self.start: Message | None = None
        self.compressor: zlib._Compress | None = None  # set once a streamed answer is compressed
        self.decided = False

    async def run(self, receive: Receive) -> None:
        await self.mw.app(self.scope, receive, self.on_send)

    def declared(self) -> bool:
        return self.public or bool(self.scope.get("state", {}).get(SECRET_FREE))

    def eligible(self, start: Message) -> bool:
        if start["status"] != 200:
            return False
        headers = Headers(raw=start["headers"])
        if "content-encoding" in headers:
            return False
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in COMPRESSIBLE_TYPES:
            return False
        return self.declared()

    async def on_send(self, message: Message) -> None:
        if self.decided:
            await self.send_rest(message)
            return
        if message["type"] == "http.response.start":
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            # pathsend, early hints or trailers before any body: passed on as they are.
            self.decided = True
            if self.start is not None:
                await self.send(self.start)
            await self.send(message)
            return
        self.decided = True
        await self.first_body(self.start, message)

    async def first_body(self, start: Message, message: Message) -> None:
        if start["status"] == 304 and self.declared():
            # What the 200 would have said: a cache keeps its stored answer's headers in step.
            headers = MutableHeaders(raw=start["headers"])
            add_vary(headers)
            if self.wants_gzip:
                weaken(headers)
        if not self.eligible(start):
            await self.send(start)
            await self.send(message)
            return
        headers = MutableHeaders(raw=start["headers"])
        add_vary(headers)
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not self.wants_gzip or (len(body) < self.mw.minimum_size and not more):
            await self.send(start)
            await self.send(message)
            return
        if not self.public:
            if more:
                # A marked answer is checked whole before it is compressed; a stream is not.
                await self.send(start)
                await self.send(message)
                return
            token = self.scope.get("state", {}).get(CSRF_STATE)
            if isinstance(token, str) and token and token.encode() in body:
                log.warning(
                    "answer marked secret-free holds the CSRF token: sent uncompressed",
                    path=self.scope["path"],
                )
                await self.send(start)
                await self.send(message)
                return
        compressed = await self.compress(body, final=not more)
        headers["Content-Encoding"] = "gzip"
        weaken(headers)
        if more:
            del headers["Content-Length"]
        else:
            headers["Content-Length"] = str(len(compressed))
        await self.send(start)
        await self.send({**message, "body": compressed})

    async def send_rest(self, message: Message) -> None:
        if self.compressor is not None and message["type"] == "http.response.body":
            more = bool(message.get("more_body", False))
            message = {**message, "body": await self.compress(message.get("body", b""), final=not more)}
        await self.send(message)

    async def compress(self, body: bytes, *, final: bool) -> bytes:
        if self.compressor is None:
            self.compressor = zlib.compressobj(self.mw.level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        compressor = self.compressor

        def run() -> bytes:
            return compressor.compress(body) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

        if len(body) >= THREAD_MINIMUM:
            return await anyio.to_thread.run_sync(run)
        return run()
