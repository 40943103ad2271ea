"""In real Chromium on a 390-px phone: a new device's first chart page shows its charts drawn for
the phone, never a laptop's shrunk to fit (the viewport cookie comes after that page's answer),
and a report printed from a phone prints charts drawn for paper, not for the phone.

Screenshots: ``phone-first-dashboard.png``, ``phone-report-print.png`` (and the PDF,
``phone-report.pdf``) in ``LLMSCOPE_SCREENSHOTS``."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page

from llmscope.web.pages import CHART_WIDTH, VIEWPORT_COOKIE
from tests.api.conftest import API_KEY
from tests.web.test_browser import SHOTS, Site, browser_page, log_in, site

__all__ = ["site"]  # the fixture, used here by name

pytestmark = [pytest.mark.usefixtures("js"), pytest.mark.timeout(240)]

PHONE = {"width": 390, "height": 844}
PHONE_CHART = 380  # pages.chart_width("390")
CHARTS = "svg.control-chart, svg.comparison-chart, svg.availability-chart, svg.mini-chart"

# Before every frame the page paints, the widths (viewBox) of the charts it shows.
RECORD_SHOWN = """(() => {
  window.shownWidths = [];
  const look = () => {
    for (const svg of document.querySelectorAll('CHARTS')) {
      if (svg.getBoundingClientRect().width > 0 && getComputedStyle(svg).visibility !== 'hidden')
        window.shownWidths.push(svg.viewBox.baseVal.width);
    }
    requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
})();""".replace("CHARTS", CHARTS)


async def shown_widths(page: Page, selector: str) -> list[float]:
    widths: list[float] = await page.eval_on_selector_all(
        selector,
        """all => all.filter(svg => svg.getBoundingClientRect().width > 0
            && getComputedStyle(svg).visibility !== 'hidden').map(svg => svg.viewBox.baseVal.width)""",
    )
    return widths


async def test_a_new_phones_first_chart_page_shows_charts_drawn_for_it(site: Site) -> None:
    async with browser_page(site) as page:
        await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        await page.add_init_script(RECORD_SHOWN)
        loads: list[str] = []
        page.on("load", lambda p: loads.append(p.url))
        redraws: list[str] = []
        page.on("request", lambda r: redraws.append(r.url) if r.headers.get("hx-target") == "main" else None)
        # A link with the key, opened on a new phone: the first page it loads is a chart page,
        # answered before any of the dashboard's pages could set the viewport cookie.
        assert not await page.context.cookies()
        await page.goto(f"{site.url}/dashboard?key={API_KEY}")
        await page.wait_for_function("() => !document.documentElement.classList.contains('vw-redraw')")
        await page.wait_for_load_state("networkidle")
        assert {c["name"]: c["value"] for c in await page.context.cookies()}[VIEWPORT_COOKIE] == "390"
        assert await shown_widths(page, "svg.control-chart") == [PHONE_CHART]
        shown = await page.evaluate("window.shownWidths")
        assert shown  # charts were painted, and every one drawn for the phone
        assert set(shown) == {PHONE_CHART}, sorted(set(shown))
        # One page load (no reload), and one re-read of its content.
        assert loads == [f"{site.url}/dashboard"]
        assert redraws == [f"{site.url}/dashboard"]
        await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "phone-first-dashboard.png"))
        # The next page knows the width: drawn right at once, with nothing re-read.
        await page.goto(f"{site.url}/report?hours=24")
        await page.wait_for_load_state("networkidle")
        assert set(await shown_widths(page, CHARTS)) == {PHONE_CHART}
        assert len(redraws) == 1
        assert await page.evaluate("document.documentElement.className") == ""
    assert site.errors == [], "\n".join(site.errors)


async def test_a_report_printed_from_a_phone_prints_charts_drawn_for_paper(site: Site) -> None:
    async with browser_page(site) as page:
        await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        await log_in(page, site, "/report?hours=24")
        await page.locator("#report-violations tbody tr").first.wait_for()
        on_screen = await shown_widths(page, CHARTS)
        assert len(on_screen) >= 2  # the comparison and a control chart at least
        assert set(on_screen) == {PHONE_CHART}
        await page.emulate_media(media="print")
        on_paper = await shown_widths(page, CHARTS)
        assert len(on_paper) == len(on_screen)
        assert set(on_paper) == {CHART_WIDTH}
        await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "phone-report-print.png"), full_page=True)
        pdf = await page.pdf(path=str(SHOTS / "phone-report.pdf"))
        assert pdf.startswith(b"%PDF")
        await page.emulate_media(media="screen")
        assert set(await shown_widths(page, CHARTS)) == {PHONE_CHART}
    assert site.errors == [], "\n".join(site.errors)
