"""The Traffic pages in a real browser, with real traffic charted: OTLP spans -> the API's receiver
-> the SPC engine's per-minute subgroups (a "minute" is one second here) -> the list and a chart
page in Chromium, screenshotted like the other pages (``tests/web/test_browser.py``)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
import uvicorn
from playwright.async_api import Locator

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
from tests.web.test_browser_phone import PHONE, PHONE_CHART

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
        await check_line_labels(chart)
        # On a phone: the compact layout, labels inside the plot, none cut off.
        await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        await page.wait_for_function("() => document.cookie.includes('llmscope_vw=390')")
        await page.reload()
        await page.wait_for_function("() => !document.documentElement.classList.contains('vw-redraw')")
        await page.wait_for_load_state("networkidle")
        await chart.wait_for()
        assert await chart.evaluate("svg => svg.viewBox.baseVal.width") == PHONE_CHART
        await check_line_labels(chart)
        await shot(page, "traffic-chart-phone")
    assert site.errors == [], "\n".join(site.errors)


async def check_line_labels(chart: Locator) -> None:
    """The limit's label names the latest minute's limit and its number of requests (it read
    "UCL at n"), the center's its value, and each lies whole inside the chart."""
    labels = await chart.locator("text.limit-label, text.center-label").all_text_contents()
    assert re.fullmatch(r"UCL [\d.,]+ n=\d+", labels[0]), labels
    assert re.fullmatch(r"CL [\d.,]+", labels[1]), labels
    outside = await chart.evaluate(
        """svg => { const box = svg.getBoundingClientRect();
            return [...svg.querySelectorAll('text.limit-label, text.center-label')]
                .map(t => [t.textContent, t.getBoundingClientRect()])
                .filter(([, r]) => r.left < box.left - 0.5 || r.right > box.right + 0.5)
                .map(([text, r]) => `${text}: ${r.left}-${r.right} of ${box.left}-${box.right}`); }"""
    )
    assert outside == [], outside
