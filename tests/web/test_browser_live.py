"""In real Chromium: an open tab with its event stream up does not poll (issue 13: idle tabs cost
nothing), polls while the stream is down, and re-reads what it shows when the stream resumes."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page, Request

from tests.web.test_browser import Site, browser_page, log_in, site

__all__ = ["site"]  # the fixture, used here by name

pytestmark = [pytest.mark.usefixtures("js"), pytest.mark.timeout(240)]


async def polls_within(page: Page, site: Site, seconds: float) -> int:
    """The chart panel's re-reads seen in ``seconds``."""
    seen: list[Request] = []

    def on_request(request: Request) -> None:
        if (
            request.url.startswith(f"{site.url}/dashboard?")
            and request.headers.get("hx-target") == "chart-panel"
        ):
            seen.append(request)

    page.on("request", on_request)
    try:
        await asyncio.sleep(seconds)  # counting what does not happen takes a wait
    finally:
        page.remove_listener("request", on_request)
    return len(seen)


async def test_the_fallback_poll_stands_still_while_the_stream_is_up(site: Site) -> None:
    async with browser_page(site) as page:
        await log_in(page, site, "/dashboard")
        await page.wait_for_function("() => window.llmscopeLive === true")
        # The page's own fallback trigger, its interval cut from 30 s to 0.5 s (the filter as served).
        trigger = await page.evaluate(
            """() => { const panel = document.getElementById('chart-panel');
                       const fast = panel.getAttribute('hx-trigger').split(', ')
                           .filter(t => t.startsWith('every '))
                           .map(t => t.replace(/every \\S+/, 'every 0.5s'));
                       panel.setAttribute('hx-trigger', fast.join(', '));
                       htmx.process(panel);
                       return panel.getAttribute('hx-trigger'); }"""
        )
        assert trigger == "every 0.5s [!llmscopeLive]"
        assert await polls_within(page, site, 3) == 0  # the stream is up: no poll
        await page.evaluate("() => { window.llmscopeLive = false; }")  # as when the stream breaks
        # It polls (the answer replaces the panel, with the page's own 30 s poll again).
        assert await polls_within(page, site, 3) >= 1

    async with browser_page(site) as page:
        await log_in(page, site, "/dashboard")
        await page.wait_for_function("() => window.llmscopeLive === true")
        # The server ends every stream (as after its bus connection came back): the tab reconnects
        # (retry: 3 s) and its chart re-reads at once, long before its 30 s fallback poll.
        async with page.expect_request(
            lambda r: (
                r.url.startswith(f"{site.url}/dashboard?") and r.headers.get("hx-target") == "chart-panel"
            ),
            timeout=15_000,
        ) as reread:
            site.api.runtime.live.drop_all()
        assert (await reread.value).headers.get("hx-request") == "true"
        await page.wait_for_function("() => window.llmscopeLive === true")
