"""An ERROR_RATE violation the real engine made, on the pages that say its count (its own page,
the violations table, an incident of it, the report), in Debian's chromium at a laptop's and a
phone's width: the longer wording ("10 failed probes in the last 50") fits its cells, and the
page's figures read true."""

from __future__ import annotations

from datetime import timedelta

from llmscope.api.persister import store_violations
from llmscope.web.data import ViolationFilter
from tests.api.factories import telemetry
from tests.web.engine_events import error_rate_violation
from tests.web.test_browser import (
    FIGURES,
    LAYOUT,
    SHOTS,
    TABLES,
    WALK_VIEWPORTS,
    Site,
    availability_figures_wrong,
    browser_page,
    log_in,
    site,
)

__all__ = ["site"]  # the fixture, used here by name


async def test_an_error_rate_violation_reads_true_and_fits(site: Site) -> None:
    found = await site.api.store.violations(ViolationFilter(rule="AVAILABILITY", limit=1))
    like = found.items[0]  # the site's target and model: the report lists it
    probes = [
        telemetry(i, id=f"er{i:03d}", model=like.model, target=like.target, ts=like.ts + timedelta(seconds=i))
        for i in range(120)
    ]
    _, ev = await error_rate_violation(probes, range(41, 120, 3), "v-error-rate")
    async with site.api.store.pool.acquire() as conn:
        await store_violations(conn, [ev])
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    async with browser_page(site) as page:
        await log_in(page, site)
        for device, viewport in WALK_VIEWPORTS.items():
            await page.set_viewport_size(viewport)  # type: ignore[arg-type]
            for path, name in (
                ("/violations/v-error-rate", "violation"),
                ("/violations?rule=ERROR_RATE", "violations"),
                ("/report?hours=24", "report"),
            ):
                await page.goto(f"{site.url}{path}")
                await page.wait_for_selector("main .card")
                await page.wait_for_load_state("networkidle")
                await page.screenshot(path=str(SHOTS / f"error-rate-{device}-{name}.png"), full_page=True)
                text = await page.locator("main").inner_text()
                assert "10 failed probes in the last 50" in text, (device, name)
                checks = [
                    *await page.evaluate(LAYOUT),
                    *await page.evaluate(FIGURES),
                    *await page.evaluate(TABLES),
                ]
                problems += [f"{device} {name}: {what} {detail}" for what, detail in checks]
                if name == "violation":
                    problems += [f"{device} {name}: {w}" for w in await availability_figures_wrong(page)]
    assert problems == [], "\n".join(problems)
