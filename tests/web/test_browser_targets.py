"""Targets in real Chromium: a long, credentialed or IPv6 target on the Models page, a
violation's header and the report's chart headings, at 1366, 1920 and 390 px; and the Models
page's "not charted yet" badge within its column.

Screenshots in ``LLMSCOPE_SCREENSHOTS``: ``targets-models-{laptop,wide,phone}.png``,
``targets-violation-{laptop,phone}.png``, ``targets-report-{laptop,phone}.png``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import uvicorn

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.stack.ports import free_port
from tests.api.conftest import Api
from tests.api.engine import eventually
from tests.api.factories import telemetry
from tests.web.engine_events import availability_violation
from tests.web.test_browser import (
    FIGURES,
    HEALTH_OVERFLOW,
    SHOTS,
    Site,
    availability_figures_wrong,
    browser_page,
    log_in,
    wide_model_probes,
)
from tests.web.test_userinfo import CREDENTIALED, KEYED, SECRET, printed

pytestmark = [pytest.mark.timeout(240)]

IPV6 = "http://[2001:db8:1234:5678:9abc:def0:1234:5678]:8443/v1/chat/completions"
LONG_LABEL_SHORT_URL = "https://inferenceclusterprod01.ai/v1"  # shown whole: no dot for 22 characters
VIEWPORTS = {
    "laptop": {"width": 1366, "height": 768},
    "wide": {"width": 1920, "height": 1080},
    "phone": {"width": 390, "height": 844},
}


@pytest.fixture
async def targets_site(api: Api) -> AsyncIterator[Site]:
    """Probes of three targets (no engine: no availability chart, "not charted yet") and a
    violation on the credentialed one."""
    now = datetime.now(UTC)
    probes = [
        telemetry(
            i, id=f"{name}-{i}", target=target, ts=now - timedelta(minutes=2 * (60 - i)), streaming=i % 2 == 0
        )
        for name, target in (
            ("cred", CREDENTIALED),
            ("v6", IPV6),
            ("local", "http://localhost:11434"),
            ("keyed", KEYED),  # a key in the query; a first label of 22 characters, no hyphen
            ("short", LONG_LABEL_SHORT_URL),
        )
        for i in range(60)
    ]
    # The credentialed target fails twice in its availability baseline (a 7.14 % failure rate:
    # 3 / 42) and then 6 times in a row, the run that rate needs to signal: the engine's own
    # AVAILABILITY violation, at the 56th probe.
    cred = [p for p in probes if p.target == CREDENTIALED]
    cred, outage = await availability_violation(cred, (7, 19, *range(50, 56)), "v-cred")
    probes = cred + [p for p in probes if p.target != CREDENTIALED]
    # A model as people name them, failing in four ways, its figures wide (the browser walk's
    # widest row): the columns squeezed to their least at 1366 px.
    probes += wide_model_probes(now - timedelta(seconds=1000))
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [outage])
    server = uvicorn.Server(
        uvicorn.Config(api.app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, within=20, what="uvicorn to listen")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Site(api, f"http://127.0.0.1:{port}")
    finally:
        api.runtime.live.close_all()
        server.should_exit = True
        await asyncio.wait_for(task, 20)


# The on-screen size (px) of each shown chart's axis labels: what a reader sees of their 11 px.
TICK_PX = """() => [...document.querySelectorAll(
    'svg.control-chart, svg.comparison-chart, svg.availability-chart, svg.mini-chart')]
  .filter(svg => svg.getBoundingClientRect().width > 0)
  .map(svg => {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    const tick = svg.querySelector('text.tick');
    return [svg.classList[0], svg.viewBox.baseVal.width,
            tick ? +(parseFloat(getComputedStyle(tick).fontSize) * scale).toFixed(1) : null];
  })"""
REDRAWN = "() => !document.documentElement.classList.contains('vw-redraw')"
# 11 px drawn for the viewport: about 10 px on a phone, 14 px on a laptop (a 960 drawing widened).
TICK_RANGE = {"laptop": (13.0, 15.0), "phone": (9.5, 11.5)}


async def test_targets_fit_and_never_show_a_password(targets_site: Site) -> None:
    site = targets_site
    shown, keyed_shown = printed(CREDENTIALED), printed(KEYED)  # fingerprinted under the site's key
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    async with browser_page(site) as page:
        await log_in(page, site, "/models")
        for name, size in VIEWPORTS.items():
            await page.set_viewport_size(size)  # type: ignore[arg-type]
            await page.goto(f"{site.url}/models")
            await page.wait_for_selector("table.health tbody tr")
            await page.screenshot(path=str(SHOTS / f"targets-models-{name}.png"), full_page=True)
            assert SECRET not in await page.inner_text("body")
            assert await page.locator(f'span.url[title="{keyed_shown}"]').count()
            overflow = await page.evaluate(HEALTH_OVERFLOW)
            assert overflow == [], (name, [o for o in overflow if "badge" in o[0]], overflow)
        for name in ("laptop", "phone"):
            await page.set_viewport_size(VIEWPORTS[name])  # type: ignore[arg-type]
            # The first page after the resize is asked with the cookie of the last width: its
            # charts (the availability violation's "latency of the probes around it" too) are
            # drawn again for this one (static/viewport.js), never shown scaled from the other.
            for path, shot in (("/violations/v-cred", "violation"), ("/report?hours=24", "report")):
                await page.goto(f"{site.url}{path}")
                await page.wait_for_function(REDRAWN)
                await page.wait_for_load_state("networkidle")
                ticks = await page.evaluate(TICK_PX)
                low, high = TICK_RANGE[name]
                assert ticks, path
                assert all(px is not None and low <= px <= high for _, _, px in ticks), (name, path, ticks)
                await page.screenshot(path=str(SHOTS / f"targets-{shot}-{name}.png"), full_page=True)
                if shot == "violation":
                    # The engine's figures, as a reader wants them: the baseline rate and the run
                    # that signalled, the failed probes counted.
                    assert await availability_figures_wrong(page) == [], name
                    assert await page.evaluate(FIGURES) == [], name
                    kv = await page.locator("table.kv").first.inner_text()
                    assert "7.14 %" in kv, kv
                    assert "6 failed probes in a row" in kv, kv
                assert SECRET not in await page.inner_text("body")
                assert await page.locator(f'span.url[title="{shown}"]').count()
    assert site.errors == []
