"""The front door: credentials before the body, a cap on the body's size (issue 9, finding 4)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

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
