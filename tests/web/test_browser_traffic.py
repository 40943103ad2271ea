"""The Traffic pages in a real browser, with real traffic charted: OTLP spans -> the API's receiver
-> the SPC engine's per-minute subgroups (a "minute" is one second here) -> the list and a chart
page in Chromium, screenshotted like the other pages (``tests/web/test_browser.py``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
import uvicorn

from llmscope.proto.charts import chart_key
from llmscope.spc_engine import service as spc
from llmscope.spc_engine.traffic import LPT_P50
from llmscope.stack.ports import free_port
from tests.api.conftest import Api
from tests.api.engine import eventually
from tests.api.otlp_payloads import export
from tests.api.test_otlp_receiver import PROTOBUF
from tests.api.test_otlp_traffic_charts import otlp_api
from tests.api.traffic_harness import fast_traffic_settings, slowing_spans
from tests.web.test_browser import Site, browser_page, log_in, shot

__all__ = ["otlp_api"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.timeout(240)]

WINDOWS, SLOW_FROM, PER_WINDOW = 16, 11, 8
KEY = chart_key("openai", "gpt-4o-mini", "checkout", "traffic:chat", LPT_P50)


@pytest.fixture
async def traffic_site(otlp_api: Api, nats_url: str) -> AsyncIterator[Site]:
    settings = fast_traffic_settings(nats_url)
    stop = asyncio.Event()
    engine = asyncio.create_task(spc.serve(settings, stop))
    server = uvicorn.Server(
        uvicorn.Config(otlp_api.app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        first = math.ceil(time.time()) + 2
        spans = slowing_spans(7, first, WINDOWS, PER_WINDOW, SLOW_FROM, 2.5)
        r = await otlp_api.anon.post(
            "/v1/traces", content=export(*spans).SerializeToString(), headers=PROTOBUF
        )
        assert r.status_code == 200, r.content

        async def charted() -> bool:
            got = await otlp_api.client.get(f"/api/charts/{KEY}")
            if got.status_code != 200:
                return False
            body = got.json()
            return body["view"]["phase"] == "armed" and len(body["traffic"]["recent"]) == WINDOWS

        await eventually(charted, within=180, what="the traffic chart armed with every minute")
        await eventually(lambda: server.started, within=20, what="uvicorn to listen")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Site(otlp_api, f"http://127.0.0.1:{port}")
    finally:
        otlp_api.runtime.live.close_all()
        server.should_exit = True
        await asyncio.wait_for(serving, 20)
        stop.set()
        await asyncio.wait_for(engine, 30)


async def test_traffic_list_and_chart_pages(traffic_site: Site) -> None:
    site = traffic_site
    async with browser_page(site) as page:
        await log_in(page, site, "/traffic")
        listed = page.locator(f"a[href='/traffic/chart?{urlencode({'chart': KEY})}']")
        await listed.first.wait_for()
        assert "checkout" in await page.locator("main").inner_text()
        await shot(page, "traffic")
        await listed.first.click()
        chart = page.locator("svg.control-chart")
        await chart.wait_for()
        assert await chart.locator("circle.point").count() == WINDOWS
        assert await chart.locator("circle.point.out").count() >= WINDOWS - SLOW_FROM
        assert await chart.locator("polyline.ucl-steps").count() == 1
        assert await chart.locator("text.axis-label").text_content() == "p50 latency per output token (ms)"
        await shot(page, "traffic-chart")
    assert site.errors == [], "\n".join(site.errors)
