"""gzip without BREACH: answers that hold no secret are compressed (static files, the JSON API,
the polled fragments), pages that carry the CSRF token never are, and the polled fragments answer
conditional requests (``ETag``, ``If-None-Match`` -> ``304``)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from hashlib import blake2b

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.web.compression import SecretFreeGZip, accepts_gzip, mark_secret_free
from llmscope.web.pages import etag_matches
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import HX, csrf_token, login

GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}
DAY = "/dashboard?provider=ollama&model=llama3.1:8b&prompt_id=simple-1&hours=24"
PANEL = {**HX, "HX-Target": "chart-panel"}
LOG = {**HX, "HX-Target": "violation-log"}


async def raw_get(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, bytes]:
    """The answer and its bytes as sent (httpx would decode them)."""
    async with client.stream("GET", url, headers=headers) as r:
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    return r, raw


async def seed_day(api: Api) -> datetime:
    now = datetime.now(UTC)
    probes = [telemetry(i, id=f"p{i:03d}", ts=now - timedelta(minutes=10 * (144 - i))) for i in range(144)]
    marks = [violation(probes[i], id=f"v{i:03d}", ts=probes[i].ts) for i in range(0, 144, 12)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, marks)
    return now


async def test_a_page_with_the_csrf_token_is_never_compressed(api: Api) -> None:
    await seed_day(api)
    client = await login(api)
    for path in (DAY, "/", "/settings", "/models", "/violations"):
        r, raw = await raw_get(client, path, GZIP)
        assert r.status_code == 200, (path, r.status_code)
        assert "content-encoding" not in r.headers, path
        assert "Accept-Encoding" not in r.headers.get("vary", ""), path
        assert "etag" not in r.headers, path
        # The bytes as sent hold the session's token in the clear: this is the page itself.
        token = csrf_token(httpx.Response(200, content=raw))
        assert token.encode() in raw
    # Asked for the page's content block by htmx (no polled fragment): not compressed either.
    r, raw = await raw_get(client, DAY, {**GZIP, **HX})
    assert "content-encoding" not in r.headers


async def test_the_day_chart_panel_is_gzip_and_decodes_to_the_same_bytes(api: Api) -> None:
    await seed_day(api)
    client = await login(api)
    # The chart's x axis ends now (0.1 px is ~11 s of a day): two reads can differ. Read both
    # forms until they are of the same content (the same tag), a few tries at most.
    for _ in range(5):
        plain, plain_raw = await raw_get(client, DAY, {**PANEL, **IDENTITY})
        packed, packed_raw = await raw_get(client, DAY, {**PANEL, **GZIP})
        if packed.headers["etag"] == f"W/{plain.headers['etag']}":
            break
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "HX-Request, HX-Target, Cookie, Accept-Encoding"
    assert plain_raw.lstrip().startswith(b'<div id="chart-panel"')
    assert len(plain_raw) > 5000

    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "HX-Request, HX-Target, Cookie, Accept-Encoding"
    assert int(packed.headers["content-length"]) == len(packed_raw)
    # Its tag names the same content, weakened (the compressed bytes are not the identity's),
    # and the server made it from the bytes it compressed: they decode to the identity's.
    assert packed.headers["etag"] == f"W/{plain.headers['etag']}"
    assert gzip.decompress(packed_raw) == plain_raw
    assert f'"{blake2b(gzip.decompress(packed_raw), digest_size=16).hexdigest()}"' == plain.headers["etag"]
    assert len(packed_raw) < len(plain_raw) / 3

    # The violation log's poll and the window's panel too.
    for headers in (LOG, {**HX, "HX-Target": "panel"}):
        packed, packed_raw = await raw_get(client, DAY, {**headers, **GZIP})
        assert packed.headers["content-encoding"] == "gzip", headers
        html = gzip.decompress(packed_raw)
        assert b"csrf" not in html.lower()
        assert b'name="csrf-token"' not in html


async def test_json_api_and_static_files_are_gzip(api: Api) -> None:
    await seed_day(api)
    r, raw = await raw_get(api.client, "/api/violations?limit=50", GZIP)
    assert r.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in r.headers["vary"]
    assert len(gzip.decompress(raw)) > len(raw)
    r, raw = await raw_get(api.client, "/api/stats/spc?provider=ollama&model=llama3.1:8b&hours=24", GZIP)
    assert r.headers["content-encoding"] == "gzip"
    # Static files: the same bytes for everyone; a tag of theirs is weakened when gzipped.
    plain, plain_raw = await raw_get(api.anon, "/static/htmx.min.js", IDENTITY)
    packed, packed_raw = await raw_get(api.anon, "/static/htmx.min.js", {"Accept-Encoding": "br, gzip;q=0.8"})
    assert packed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(packed_raw) == plain_raw
    assert packed.headers["etag"] == f"W/{plain.headers['etag']}"
    # The weak tag still revalidates (StaticFiles compares weakly).
    r = await api.anon.get("/static/htmx.min.js", headers={**GZIP, "If-None-Match": packed.headers["etag"]})
    assert r.status_code == 304
    # gzip refused explicitly: identity, with the Vary that keeps the two apart.
    r, raw = await raw_get(api.anon, "/static/style.css", {"Accept-Encoding": "gzip;q=0, deflate"})
    assert "content-encoding" not in r.headers
    assert "Accept-Encoding" in r.headers["vary"]
    # The login page is not marked (it is a form): never compressed.
    r, _ = await raw_get(api.anon, "/login", GZIP)
    assert "content-encoding" not in r.headers


async def revalidated(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """A 304 for the tag of the last answer. Texts that move with the clock ("3m ago", a chart's
    x axis) may change the content between two reads: then the next try has its new tag."""
    r = await client.get(url, headers=headers)
    for _ in range(5):
        again = await client.get(url, headers={**headers, "If-None-Match": r.headers["etag"]})
        if again.status_code == 304:
            return again
        assert again.status_code == 200, (url, again.status_code)
        r = again
    raise AssertionError(f"{url} {headers}: never a 304")


async def test_polled_fragments_answer_conditional_requests(api: Api) -> None:
    now = await seed_day(api)
    client = await login(api)
    first = await client.get(DAY, headers={**LOG, **IDENTITY})
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    assert first.headers["vary"] == "HX-Request, HX-Target, Cookie, Accept-Encoding"
    # Nothing new: a bodiless 304 with the tag, for the tag as sent, weakened (gzip) or listed.
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get(DAY, headers={**LOG, "If-None-Match": tag})
        assert again.status_code == 304, tag
        assert again.content == b""
        assert again.headers["etag"] == f"W/{etag}"  # as the gzip answer's (httpx accepts gzip)
        assert again.headers["cache-control"] == "private, no-cache"
        assert again.headers["vary"] == "HX-Request, HX-Target, Cookie, Accept-Encoding"
    assert (await client.get(DAY, headers={**LOG, "If-None-Match": '"stale"'})).status_code == 200
    # A new violation: what the log shows changed, and so does its tag.
    async with api.store.pool.acquire() as conn:
        probe = telemetry(200, id="p-new", ts=now - timedelta(minutes=1))
        await store_telemetry(conn, [probe])
        await store_violations(conn, [violation(probe, id="v-new", ts=probe.ts, severity="critical")])
    changed = await client.get(DAY, headers={**LOG, "If-None-Match": etag})
    assert changed.status_code == 200
    assert "v-new" in changed.text
    assert changed.headers["etag"] != etag

    # The chart panel: the new mark changes it and its tag; unchanged, it revalidates.
    panel = await client.get(DAY, headers=PANEL)
    assert (await revalidated(client, DAY, PANEL)).content == b""
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, [violation(probe, id="v-newer", ts=probe.ts, severity="critical")])
    newer = await client.get(DAY, headers={**PANEL, "If-None-Match": panel.headers["etag"]})
    assert newer.status_code == 200
    # At v-new's probe: the two share one mark, which counts them.
    assert 'class="violation-count">2</text>' in newer.text

    # The other fallback polls: the overview, the models' health table, the status list.
    for path, target in (
        ("/?hours=1", "overview"),
        ("/models?hours=1", "health"),
        ("/status", "status-list"),
    ):
        await revalidated(client, path, {**HX, "HX-Target": target})
    # Whole pages carry no tag: they hold the session's token and are read once.
    assert "etag" not in (await client.get(DAY)).headers


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.5", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.1", True),
        ("gzip;q=0, *", False),
        ("identity", False),
        ("", False),
    ],
)
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


def test_if_none_match() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches('"b", W/"a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches('"b"', '"a"')
    assert not etag_matches("", '"a"')


async def test_a_marked_answer_that_holds_the_token_all_the_same_is_sent_plain() -> None:
    """The guard behind the rule: a route marked secret-free whose body holds the request's CSRF
    token (a template change that put it in a fragment) is not compressed."""
    app = FastAPI()
    token = "f" * 64

    @app.get("/leaky")
    async def leaky(request: Request) -> HTMLResponse:
        request.state.csrf_token = token
        mark_secret_free(request)
        return HTMLResponse(f"<div>{'x' * 2000}<meta name='csrf-token' content='{token}'></div>")

    @app.get("/clean")
    async def clean(request: Request) -> HTMLResponse:
        request.state.csrf_token = token
        mark_secret_free(request)
        return HTMLResponse(f"<div>{'x' * 2000}</div>")

    @app.get("/unmarked")
    async def unmarked() -> JSONResponse:
        return JSONResponse({"x": "y" * 2000})

    app.add_middleware(SecretFreeGZip)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r, raw = await raw_get(client, "/leaky", GZIP)
        assert "content-encoding" not in r.headers
        assert token.encode() in raw
        r, raw = await raw_get(client, "/clean", GZIP)
        assert r.headers["content-encoding"] == "gzip"
        r, raw = await raw_get(client, "/unmarked", GZIP)
        assert "content-encoding" not in r.headers
        assert "vary" not in r.headers
