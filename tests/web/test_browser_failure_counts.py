"""An ERROR_RATE violation the real engine made, on the pages that say its count (its own page,
the violations table, an incident of it, the report), in Debian's chromium at a laptop's and a
phone's width: the longer wording ("10 failed probes in the last 50") fits its cells, and the
page's figures read true."""

from __future__ import annotations

import itertools
from datetime import timedelta

from playwright.async_api import Page

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.data import ViolationFilter
from tests.api.factories import telemetry
from tests.web.engine_events import error_rate_violation, store_seen
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

SECOND = timedelta(seconds=1)
__all__ = ["site"]  # the fixture, used here by name


async def pattern_wrong(page: Page, trigger: TelemetryEvent) -> list[str]:
    """What the violation's page says wrong of the pattern the engine saw: its one point is the
    trigger, a failed probe at its time; the probes around it are the scattered failures (every
    third probe failed, the trigger among them), not a run of them."""
    wrong = []
    cells = [(await c.inner_text()).strip() for c in await page.locator("table.points tbody td").all()]
    when = trigger.ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    if cells != ["1", trigger.id, when, "timeout"]:
        wrong.append(f"pattern points {cells!r}")
    rows = await page.locator("table.context tbody tr").all()
    classes = [await r.get_attribute("class") or "" for r in rows]
    down = [i for i, c in enumerate(classes) if "failed" in c.split()]
    if len(classes) != 21 or "trigger" not in classes[10].split() or not down:
        wrong.append(f"probes around it {classes!r}")
    elif any(b - a != 3 for a, b in itertools.pairwise(down)):
        wrong.append(f"failures around it not every third probe: {down!r}")
    return wrong


async def test_an_error_rate_violation_reads_true_and_fits(site: Site) -> None:
    found = await site.api.store.violations(ViolationFilter(rule="AVAILABILITY", limit=1))
    like = found.items[0]  # the site's target and model: the report lists it
    # The probes the engine saw, stored: an hour before the site's outage (the site's probes
    # begin minutes before it), so the page's pattern and the probes around it are theirs. Not
    # stored, the trigger had no time or value, and the site's outage stood around it.
    start = like.ts - timedelta(hours=1)
    probes = [
        telemetry(i, id=f"er{i:03d}", model=like.model, target=like.target, ts=start + 2 * i * SECOND)
        for i in range(120)
    ]
    probes, ev = await error_rate_violation(probes, range(41, 120, 3), "v-error-rate")
    async with site.api.store.pool.acquire() as conn:
        await store_seen(conn, probes, ev)
    trigger = next(p for p in probes if p.id == ev.point_ids[-1])
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
                    problems += [f"{device} {name}: {w}" for w in await pattern_wrong(page, trigger)]
    assert problems == [], "\n".join(problems)
