"""In real Chromium: an open tab with its event stream up does not poll (issue 13: idle tabs cost
nothing), polls while the stream is down, and re-reads what it shows when the stream resumes.

The page's timers run on Playwright's clock (``page.clock``): poll intervals are run through, not
waited for, so what does not happen is proved without a wall-clock wait."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from tests.web.test_browser import Site, browser_page, log_in, site

__all__ = ["site"]  # the fixture, used here by name

pytestmark = [pytest.mark.usefixtures("js"), pytest.mark.timeout(240)]


# Counted in the page as htmx makes them: a poll is the request its "every" timer issues, the
# one request htmx makes with no triggering event. Also kept: whether the event stream opened.
COUNT_POLLS = """
window.testPolls = [];
window.testStreamOpen = false;
document.addEventListener('htmx:sseOpen', () => { window.testStreamOpen = true; });
document.addEventListener('htmx:beforeRequest', (e) => {
  if (!e.detail.requestConfig.triggeringEvent) window.testPolls.push(e.detail.elt.id);
});
"""
POLLED = ("chart-panel", "violation-log")


def server_304s(site: Site) -> float:
    """The 304s the dashboard's route has answered (the API's own request counter)."""
    labels = {"method": "GET", "route": "/dashboard", "status": "304"}
    return (
        site.api.runtime.metrics.registry.get_sample_value("llmscope_api_http_requests_total", labels) or 0.0
    )


async def polls(page: Page) -> dict[str, int]:
    """The fallback polls of the chart panel and the violation log made so far."""
    made: list[str] = await page.evaluate("() => window.testPolls")
    return {name: made.count(name) for name in POLLED}


async def test_the_fallback_poll_stands_still_while_the_stream_is_up(site: Site) -> None:
    async with browser_page(site) as page:
        # The page's timers run on Playwright's clock: time is moved on, never waited for.
        await page.clock.install()
        await page.add_init_script(COUNT_POLLS)
        await log_in(page, site, "/dashboard")
        await page.wait_for_function("() => window.testStreamOpen === true")
        now = await page.evaluate("() => Date.now()")
        await page.clock.pause_at(now + 1000)
        # The fallback polls as served: every 30 s, filtered on the stream being up.
        for name in POLLED:
            trigger = await page.get_attribute(f"#{name}", "hx-trigger")
            assert trigger is not None
            assert trigger.endswith("every 30s [!llmscopeLive]"), trigger
        await page.clock.run_for(5 * 30_000 + 1000)  # five poll intervals, run timer by timer
        assert await polls(page) == {"chart-panel": 0, "violation-log": 0}  # the stream is up
        assert await page.evaluate("() => window.llmscopeLive") is True

        # As when the stream breaks (static/live.js on htmx:sseError): the next tick polls, each
        # fragment once, and the server is asked.
        async with page.expect_request(
            lambda r: (
                r.url.startswith(f"{site.url}/dashboard?") and r.headers.get("hx-target") == "chart-panel"
            )
        ) as asked:
            await page.evaluate(
                """() => { document.getElementById('violation-log').dataset.before = '1';
                           window.llmscopeLive = false; }"""
            )
            await page.clock.run_for(30_000)
        assert await polls(page) == {"chart-panel": 1, "violation-log": 1}
        assert (await asked.value).headers.get("hx-request") == "true"

        # The log's next poll, nothing new in it: Chrome's cache asks with its tag (the log has its
        # own URL, so the chart panel's answer does not replace it) and the server answers 304.
        # (Its first answer swapped in first: the new element's poll timer starts then.)
        await page.wait_for_function("() => !document.querySelector('#violation-log').dataset.before")
        # The chart panel polls on the same tick, and its answer may be a 304 too (nothing new to
        # draw), which the route's counter cannot tell apart: taken off the page (htmx stops a
        # removed element's poll), so the one 304 counted is the log's.
        await page.evaluate("() => document.getElementById('chart-panel').remove()")
        answered_304 = server_304s(site)
        async with page.expect_request(
            lambda r: "part=log" in r.url and r.headers.get("hx-target") == "violation-log"
        ) as log_poll:
            await page.clock.run_for(31_000)
        request = await log_poll.value
        assert (await request.all_headers()).get("if-none-match", "").startswith('W/"')
        await request.response()
        assert server_304s(site) == answered_304 + 1

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
