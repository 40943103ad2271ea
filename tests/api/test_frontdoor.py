"""The front door: credentials before the body, a cap on the body's size (issue 9, finding 4)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from starlette.types import Receive, Scope, Send

from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError, Env
from tests.api.conftest import Api, serve

LIMIT = 64 * 1024


@pytest.fixture
async def small(settings: ApiSettings) -> AsyncIterator[Api]:
    async with serve(dataclasses.replace(settings, max_body_bytes=LIMIT)) as running:
        yield running


class Body:
    """A streamed (chunked) request body that records how much of it was read."""

    def __init__(self, chunks: int, size: int = 16 * 1024) -> None:
        self.chunks = chunks
        self.size = size
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"["
        for _ in range(self.chunks):
            self.read += 1
            yield b" " * self.size
        yield b"]"


@pytest.mark.parametrize(
    "path", ["/api/stats", "/api/silences", "/api/settings/refresh_s", "/api/alerts/test"]
)
async def test_no_body_is_read_without_the_key(small: Api, path: str) -> None:
    body = Body(chunks=1000)  # 16 MB if it were read
    method = "PUT" if "settings" in path else "POST"
    r = await small.anon.request(method, path, content=body)
    assert r.status_code == 401
    assert body.read == 0
    r = await small.anon.request(method, path, content=b"{}", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


async def test_dashboard_writes_need_the_session_before_their_form_is_read(small: Api) -> None:
    body = Body(chunks=10)
    r = await small.anon.post("/models/toggle", content=body)
    assert r.status_code == 303
    assert r.headers["location"] == "/login"
    assert body.read == 0
    # The login form itself is open (and capped like any body).
    r = await small.anon.post("/login", data={"key": "wrong"})
    assert r.status_code == 401


async def test_a_body_over_the_limit_is_refused_with_413(small: Api) -> None:
    r = await small.client.post("/api/stats", content=b"[" + b" " * LIMIT + b"]")
    assert r.status_code == 413
    assert "LLMSCOPE_MAX_BODY_BYTES" in r.json()["detail"]
    body = Body(chunks=100)  # streamed, no Content-Length: cut off as it passes the limit
    r = await small.client.post("/api/stats", content=body)
    assert r.status_code == 413
    assert body.read <= LIMIT // body.size + 1
    good = {"provider": "ollama", "model": "m", "target": "t", "prompt_id": "p", "prompt_hash": "h"}
    assert (await small.client.post("/api/stats", json=good)).status_code == 202


async def test_one_event_over_256_kib_is_413_naming_it(api: Api) -> None:
    good = {"provider": "ollama", "model": "m", "target": "t", "prompt_id": "p", "prompt_hash": "h"}
    r = await api.client.post("/api/stats", json=[good, {**good, "prompt_text": "x" * 300_000}])
    assert r.status_code == 413
    assert r.json()["detail"][0]["field"] == "$[1]"


def test_the_limit_is_configurable() -> None:
    env = Env({"DATABASE_URL": "postgresql://h/db", "LLMSCOPE_API_KEY": "k" * 16})
    assert ApiSettings.from_env(env).max_body_bytes == 4 * 1024 * 1024
    env = Env(
        {"DATABASE_URL": "postgresql://h/db", "LLMSCOPE_API_KEY": "k" * 16, "LLMSCOPE_MAX_BODY_BYTES": "2048"}
    )
    assert ApiSettings.from_env(env).max_body_bytes == 2048
    bad = Env(
        {"DATABASE_URL": "postgresql://h/db", "LLMSCOPE_API_KEY": "k" * 16, "LLMSCOPE_MAX_BODY_BYTES": "x"}
    )
    with pytest.raises(ConfigError):
        ApiSettings.from_env(bad)


async def test_a_nul_character_is_422_naming_where_not_a_500(api: Api) -> None:
    """Found by schemathesis (issue 9): Postgres text cannot hold NUL, and the query failed."""
    r = await api.client.get("/api/violations", params={"provider": "a\x00b"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "provider"]
    r = await api.client.get("/api/spc/config/ollama/a%00b")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path"]
    # In a JSON body: Postgres refuses it where it is stored; that is the caller's 422 too.
    r = await api.client.put("/api/settings/alert.email.from_addr", json={"value": "a\x00@example.com"})
    assert r.status_code == 422, r.text


def _complete(i: str) -> dict[str, object]:
    return {
        "type": "telemetry.v1",
        "id": i,
        "ts": "2026-12-06T12:00:00+00:00",
        "provider": "ollama",
        "model": "m",
        "target": "t",
        "prompt_id": "p",
        "prompt_hash": "h",
    }


def _requests(text: str, status: str) -> float:
    """``llmscope_api_http_requests_total`` of POST /api/stats with ``status``, from /metrics."""
    for row in text.splitlines():
        labels = ('route="/api/stats"', 'method="POST"', f'status="{status}"')
        if row.startswith("llmscope_api_http_requests_total{") and all(x in row for x in labels):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


async def test_the_front_door_lane_answers_as_the_route_does(api: Api) -> None:
    """Issue 13: the common POST /api/stats is answered by the front door (its lane), the rest
    by the route; both answer the same bytes and headers, and the metrics name the route."""
    from fastapi.routing import APIRoute, iter_route_contexts

    (stats_route,) = [
        c.original_route
        for c in iter_route_contexts(api.app.router.routes)
        if c.path == "/api/stats" and "POST" in (c.methods or ())
    ]
    assert isinstance(stats_route, APIRoute)
    handled: list[str] = []
    handle = stats_route.handle

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        handled.append(scope["path"])
        await handle(scope, receive, send)

    stats_route.handle = counted  # type: ignore[method-assign]
    before = _requests((await api.anon.get("/metrics")).text, "202")
    lane = await api.client.post("/api/stats", json=_complete("lane-0000000001"))
    assert handled == []  # answered by the front door
    # A query string (ignored by the route) keeps the request off the lane: the route answers.
    route = await api.client.post("/api/stats?via=route", json=_complete("lane-0000000002"))
    assert handled == ["/api/stats"]
    assert (lane.status_code, route.status_code) == (202, 202)
    assert lane.content == route.content.replace(b"lane-0000000002", b"lane-0000000001")
    assert lane.headers == route.headers
    assert lane.json() == {"id": "lane-0000000001", "ids": ["lane-0000000001"], "duplicates": 0}
    again = await api.client.post("/api/stats", json=[_complete("lane-0000000001")])
    assert again.json() == {"id": "lane-0000000001", "ids": ["lane-0000000001"], "duplicates": 1}
    assert _requests((await api.anon.get("/metrics")).text, "202") == before + 3
    # What the lane does not take (a default to fill in, an error to name) reaches the route
    # with its body whole.
    partial = {k: v for k, v in _complete("x").items() if k not in ("id", "ts")}
    assert (await api.client.post("/api/stats", json=partial)).status_code == 202
    bad = await api.client.post("/api/stats", json={**_complete("lane-0000000003"), "latency_ms": -1})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "$.latency_ms"
    # The key and its scope are checked before the lane, as before the route.
    wrong = {"Authorization": "Bearer not-the-key-0123456789"}
    assert (await api.anon.post("/api/stats", json=_complete("lane-4"), headers=wrong)).status_code == 401
    assert (await api.anon.post("/api/stats", json=_complete("lane-0000000005"))).status_code == 401


async def test_a_lane_that_declines_hands_the_body_on_unread() -> None:
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    from llmscope.api.frontdoor import FrontDoor

    reached: list[bytes] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(await Request(scope, receive).body())
        await PlainTextResponse("route", status_code=201)(scope, receive, send)

    async def lane(body: bytes, headers: Headers) -> Response | None:
        return None if body.startswith(b"route") else PlainTextResponse(f"lane {len(body)}", status_code=202)

    class Everyone:
        async def principal(self, request: Request) -> object:
            return None

    # /login: a write open to everyone, so the door passes it without a session or a key.
    door = FrontDoor(inner, auth=Everyone(), max_body_bytes=LIMIT, lanes={("POST", "/login"): lane})  # type: ignore[arg-type]
    sent: list[dict[str, object]] = []

    async def run(body: bytes, chunk: int) -> None:
        parts = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
        ]

        async def receive() -> dict[str, object]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/login",
            "raw_path": b"/login",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", str(len(body)).encode())],
        }
        sent.clear()
        await door(scope, receive, send)  # type: ignore[arg-type]

    await run(b"lane body in three parts", 8)
    assert [m.get("status") or m.get("body") for m in sent] == [202, b"lane 24"]
    assert reached == []
    await run(b"route body in four parts!", 7)
    assert [m.get("status") or m.get("body") for m in sent] == [201, b"route"]
    assert reached == [b"route body in four parts!"]
