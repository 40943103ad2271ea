"""Scoped keys, failed-authentication limits, revocable sessions and CSRF (issue 9, finding 7).

Before: one key opened everything (an external prober's key could change settings), 300 wrong
keys got 300 401s, a cookie copied before a logout kept working, and a dashboard POST with no
``Origin`` or ``Origin: null`` was accepted on SameSite alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request

from llmscope.api.auth import url_path
from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.web.auth import CSRF_HEADER, SESSION_COOKIE
from tests.api.conftest import API_KEY, Api, serve
from tests.api.test_frontdoor import Body

READ_KEY = "read-key-0123456789abcdef"
INGEST_KEY = "ingest-key-0123456789abcdef"
KEYS = {"admin": API_KEY, "read": READ_KEY, "ingest": INGEST_KEY}
EVENT = {"provider": "ollama", "model": "m", "target": "t", "prompt_id": "p", "prompt_hash": "h"}
SETTING = {"value": "critical", "updated_by": "test"}


class Clock:
    """Unix seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scoped(settings: ApiSettings) -> ApiSettings:
    return dataclasses.replace(settings, read_key=Secret(READ_KEY), ingest_key=Secret(INGEST_KEY))


@pytest.fixture
async def api3(scoped: ApiSettings) -> AsyncIterator[Api]:
    async with serve(scoped) as running:
        yield running


def bearer(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[scope]}"}


def client(api: Api, *, ip: str = "127.0.0.1", **kwargs: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api.app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)  # type: ignore[arg-type]


# (method, path, json body, the scope it needs, the status its own scope gets)
ROUTES = [
    ("POST", "/api/stats", EVENT, "ingest", 202),
    ("GET", "/api/violations", None, "read", 200),
    ("GET", "/api/models", None, "read", 200),
    ("PUT", "/api/settings/alert.min_severity", SETTING, "admin", 200),
]


@pytest.mark.parametrize(("method", "path", "body", "need", "ok"), ROUTES)
async def test_each_route_class_opens_to_its_scope(
    api3: Api, method: str, path: str, body: object, need: str, ok: int
) -> None:
    for scope in ("admin", "read", "ingest"):
        r = await api3.anon.request(method, path, json=body, headers=bearer(scope))
        if scope in (need, "admin"):
            assert r.status_code == ok, (scope, r.text)
        else:
            assert r.status_code == 403, scope
            assert f"needs scope '{need}'" in r.json()["detail"]
            assert f"scope is '{scope}'" in r.json()["detail"]
    r = await api3.anon.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api3.anon.request(method, path, json=body, headers={"Authorization": "Bearer wrong-key"})
    assert r.status_code == 401


async def test_the_401_names_only_the_keys_that_are_configured(api: Api, api3: Api) -> None:
    """Without a read key, telling a reader to send LLMSCOPE_READ_KEY sent them looking for a key
    that does not exist: the answer names the configured keys that would be let in."""
    only_admin = (await api.anon.get("/api/violations")).json()["detail"]
    assert only_admin == "missing or invalid API key: send 'Authorization: Bearer <LLMSCOPE_API_KEY>'"
    assert "LLMSCOPE_INGEST_KEY" not in (await api.anon.post("/api/stats", json=EVENT)).json()["detail"]
    three = (await api3.anon.get("/api/violations")).json()["detail"]
    assert three == (
        "missing or invalid API key: send 'Authorization: Bearer <LLMSCOPE_READ_KEY or LLMSCOPE_API_KEY>'"
    )
    ingest = (await api3.anon.post("/api/stats", json=EVENT)).json()["detail"]
    assert "<LLMSCOPE_INGEST_KEY or LLMSCOPE_API_KEY>" in ingest
    refused = await api3.anon.put("/api/settings/alert.min_severity", json=SETTING, headers=bearer("read"))
    assert refused.json()["detail"].endswith("needs scope 'admin' (LLMSCOPE_API_KEY)")


async def test_a_wrong_scope_is_refused_before_its_body_is_read(api3: Api) -> None:
    body = Body(chunks=1000)
    r = await api3.anon.put("/api/settings/alert.min_severity", content=body, headers=bearer("read"))
    assert r.status_code == 403
    assert body.read == 0


async def test_the_otlp_receiver_is_the_ingest_scope(api3: Api) -> None:
    json = {"Content-Type": "application/json"}
    for scope, status in (("ingest", 200), ("admin", 200), ("read", 403)):
        r = await api3.anon.post("/v1/traces", content=b"{}", headers={**json, **bearer(scope)})
        assert r.status_code == status, scope
    assert (await api3.anon.post("/v1/traces", content=b"{}", headers=json)).status_code == 401


def test_keys_are_validated_at_start() -> None:
    base = {"DATABASE_URL": "postgresql://u:p@h/db", "LLMSCOPE_API_KEY": API_KEY}
    both = ApiSettings.from_env(
        Env({**base, "LLMSCOPE_READ_KEY": READ_KEY, "LLMSCOPE_INGEST_KEY": INGEST_KEY})
    )
    assert (both.read_key.get(), both.ingest_key.get()) == (READ_KEY, INGEST_KEY)
    assert READ_KEY not in repr(both)
    none = ApiSettings.from_env(Env(base))
    assert not none.read_key
    assert not none.ingest_key
    older = ApiSettings.from_env(Env({**base, "LLMSCOPE_OTLP_INGEST_KEY": INGEST_KEY}))
    assert older.ingest_key.get() == INGEST_KEY
    with pytest.raises(ConfigError, match="LLMSCOPE_READ_KEY is too short"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_READ_KEY": "short"}))
    with pytest.raises(ConfigError, match="LLMSCOPE_READ_KEY must differ from LLMSCOPE_API_KEY"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_READ_KEY": API_KEY}))
    with pytest.raises(ConfigError, match="LLMSCOPE_READ_KEY must differ from LLMSCOPE_INGEST_KEY"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_READ_KEY": READ_KEY, "LLMSCOPE_INGEST_KEY": READ_KEY}))


# ---- the dashboard ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def login(api: Api, key: str = API_KEY) -> AsyncIterator[httpx.AsyncClient]:
    async with client(api) as browser:
        r = await browser.post("/login", data={"key": key, "next": "/settings"})
        assert r.status_code == 303, r.text
        yield browser


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page.text)
    assert found is not None
    return found.group(1)


async def test_the_read_key_views_the_dashboard_and_changes_nothing(api3: Api) -> None:
    async with login(api3, READ_KEY) as reader:
        page = await reader.get("/settings")
        assert page.status_code == 200
        r = await reader.post(
            "/models/toggle",
            data={"provider": "ollama", "model": "m", "enabled": "false"},
            headers={CSRF_HEADER: csrf_of(page)},
        )
        assert r.status_code == 403
        assert "changes need 'admin'" in r.text
        assert (await reader.get("/api/models")).status_code == 200
    async with client(api3) as browser:
        r = await browser.post("/login", data={"key": INGEST_KEY, "next": "/"})
        assert r.status_code == 403
        assert "only sends data" in r.text
        assert SESSION_COOKIE not in browser.cookies


async def test_csrf_cross_site_posts_with_a_valid_cookie_are_refused(api3: Api) -> None:
    async with login(api3) as browser:
        token = csrf_of(await browser.get("/settings"))
        toggle = {"provider": "ollama", "model": "m", "enabled": "true"}
        refused = [
            {"Origin": "https://evil.example"},
            {"Origin": "https://evil.example", CSRF_HEADER: token},  # a foreign Origin, whatever else
            {"Origin": "null"},
            {},  # neither Origin nor token (SameSite was the only defence)
            {CSRF_HEADER: "0" * 64},
            {"Referer": "https://evil.example/page"},
        ]
        for headers in refused:
            r = await browser.post("/models/toggle", data=toggle, headers=headers)
            assert r.status_code == 403, headers
            assert "cross-site request refused" in r.text
        not_ascii = [(CSRF_HEADER.encode(), "é".encode("latin-1"))]
        r = await browser.post("/models/toggle", data=toggle, headers=not_ascii)
        assert r.status_code == 403  # refused, not a 500
        accepted = [
            {CSRF_HEADER: token, "HX-Request": "true"},  # what htmx sends from hx-headers
            {"Origin": "http://testserver"},  # a plain form of ours
            {"Referer": "http://testserver/models"},
        ]
        for headers in accepted:
            r = await browser.post("/models/toggle", data=toggle, headers=headers)
            assert r.status_code == 404, headers  # past the checks: no such model
        # The token is the session's: another login's token does not open this one.
        async with login(api3) as other:
            theirs = csrf_of(await other.get("/settings"))
        assert theirs != token
        r = await browser.post("/models/toggle", data=toggle, headers={CSRF_HEADER: theirs})
        assert r.status_code == 403
    # Bearer keys are exempt: no cookie rides on them.
    r = await api3.anon.put(
        "/api/settings/alert.min_severity", json=SETTING, headers={**bearer("admin"), "Origin": "null"}
    )
    assert r.status_code == 200


async def test_logout_revokes_the_session_for_every_copy_and_across_a_restart(scoped: ApiSettings) -> None:
    async with serve(scoped) as api, login(api) as browser, login(api) as kept:  # kept: not logged out
        copied, kept_cookie = await log_out_one(api, browser, kept)
    async with serve(scoped) as restarted:
        async with client(restarted, cookies={SESSION_COOKIE: copied}) as thief:
            assert (await thief.get("/settings")).status_code == 303
        async with client(restarted, cookies={SESSION_COOKIE: kept_cookie}) as still:
            assert (await still.get("/settings")).status_code == 200


async def log_out_one(api: Api, browser: httpx.AsyncClient, kept: httpx.AsyncClient) -> tuple[str, str]:
    """Log ``browser`` out; its cookie, copied before, and the other login's no longer work / still do."""
    copied = browser.cookies[SESSION_COOKIE]
    token = csrf_of(await browser.get("/settings"))
    r = await browser.post("/logout", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403  # a cross-site page cannot log anyone out either
    r = await browser.post("/logout", headers={CSRF_HEADER: token})
    assert r.status_code == 303
    async with client(api, cookies={SESSION_COOKIE: copied}) as thief:
        r = await thief.get("/settings")
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
        assert (await thief.get("/api/violations")).status_code == 401
    assert (await kept.get("/settings")).status_code == 200
    return copied, kept.cookies[SESSION_COOKIE]


# ---- failed authentications -----------------------------------------------------------------
async def test_failed_authentications_are_limited_per_client(scoped: ApiSettings) -> None:
    clock = Clock()
    limited = dataclasses.replace(scoped, auth_failures=3, auth_failure_window_s=60)
    async with serve(limited, clock=clock) as api:
        wrong = {"Authorization": "Bearer wrong-key-0123456789"}
        for _ in range(3):
            assert (await api.anon.get("/api/models", headers=wrong)).status_code == 401
        r = await api.anon.get("/api/models", headers=wrong)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"  # 3 per 60 s: one try back every 20 s
        # Even the right key waits (a guess is not compared), and posting changes nothing.
        assert (await api.anon.get("/api/models", headers=bearer("read"))).status_code == 429
        assert (await api.anon.post("/api/stats", json=EVENT, headers=wrong)).status_code == 429
        # The login form and ?key= are the same bucket, answered as pages.
        r = await api.anon.post("/login", data={"key": "wrong"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"
        assert "Too many failed attempts" in r.text
        assert (await api.anon.get(f"/models?key={API_KEY}")).status_code == 429
        # Another address is not affected.
        async with client(api, ip="192.0.2.7") as other:
            assert (await other.get("/api/models", headers=bearer("read"))).status_code == 200
        clock.now += 20
        assert (await api.anon.get("/api/models", headers=bearer("read"))).status_code == 200
        assert (await api.anon.post("/login", data={"key": "wrong"})).status_code == 401
        assert (await api.anon.get("/api/models", headers=wrong)).status_code == 429
        clock.now += 60
        r = await api.anon.post("/login", data={"key": API_KEY, "next": "/"})
        assert r.status_code == 303


def test_url_path_is_the_urls_path_without_building_it_for_a_plain_one() -> None:
    # The auth decisions read it (issue 13: the URL was built twice per request); what the URL
    # escapes (?, #, \) or strips (tabs, trailing spaces) must come out as the URL has it.
    for path in [
        "/api/stats",
        "/api/charts/ollama:bench-00:8b|simple",
        "/api/x?y",
        "/api/x#y",
        "/api/x\\y",
        "/api/x\ty",
        "/api/stats ",
        "/a b",
        "/é",
        "//x",
        "/api//x",
        "/a%2Fb",
    ]:
        request = Request(
            {"type": "http", "method": "GET", "path": path, "query_string": b"q=1", "headers": []}
        )
        assert url_path(request) == request.url.path, path
