"""The dashboard in a real browser: Playwright drives Debian's chromium against the real app.

The app (real Postgres, NATS, SPC engine and persister) is served over HTTP on 127.0.0.1; the
engine charts the probes and its violations reach Postgres through the persister, as in
production. Each page visited is screenshotted at 1400x900 into ``LLMSCOPE_SCREENSHOTS`` (default
``build/screenshots``) and must log no console error and no failed request.

``make test`` installs chromium with apt-get when it is missing; without it these tests skip,
except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from msgspec import structs
from nats.js import JetStreamContext
from playwright.async_api import ConsoleMessage, Page, Request, Response, async_playwright

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.bus.publisher import Publisher
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import BaselineRef
from llmscope.stack.ports import free_port
from llmscope.web.alerting import IncidentFilter, SilenceInput
from llmscope.web.data import ViolationFilter
from llmscope.web.live import point_event
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import API_KEY, Api
from tests.api.engine import BASELINE_N, eventually, running_engine
from tests.api.factories import T0, limits, telemetry, violation
from tests.api.test_charts import probes
from tests.api.test_status import public_api
from tests.api.test_status import seed as seed_statuses
from tests.web.engine_events import availability_violation, failed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: `make test` installs chromium with apt-get")
    pytest.skip(
        "no chromium on PATH (make test installs Debian's with apt-get; Playwright's own browser "
        "download cannot reach its host here)",
        allow_module_level=True,
    )

__all__ = ["public_api"]

pytestmark = [pytest.mark.usefixtures("js"), pytest.mark.timeout(240)]

SHOTS = Path(os.environ.get("LLMSCOPE_SCREENSHOTS", "build/screenshots"))
VIEWPORT = {"width": 1400, "height": 900}
SHIFT_AT = BASELINE_N + 150
OUTAGE = range(BASELINE_N + 60, BASELINE_N + 105)  # 90 s: a whole minute of failures


def offset_to_now() -> timedelta:
    """How far to move the factories' probes (they start at ``T0``) so that the last ends now.

    Taken when a test seeds its site, not when this module is imported: a long CI run imported
    it 40 minutes before the walk, whose screenshots (the README's tour) then showed every model
    "stopped reporting".
    """
    return datetime.now(UTC) - (T0 + timedelta(seconds=2 * (SHIFT_AT + 59)))


@dataclass
class Site:
    api: Api
    url: str
    errors: list[str] = field(default_factory=list)
    offset: timedelta = field(default_factory=timedelta)
    """What :meth:`fresh` adds to a factory's probe: the site's data ends when it was seeded."""

    def fresh(self, event: TelemetryEvent) -> TelemetryEvent:
        return structs.replace(event, ts=event.ts + self.offset)


def _events(fresh: Callable[[TelemetryEvent], TelemetryEvent]) -> list[TelemetryEvent]:
    """Two models: the first shifts up 1.8x near the end and has an outage before."""
    main = probes(SHIFT_AT + 60)
    for i in OUTAGE:
        main[i] = failed(telemetry(i, id=f"out-{i}"))  # no timings, no tokens/s: it never answered
    for i in range(SHIFT_AT, len(main)):
        ev = main[i]
        assert ev.latency_ms is not None
        main[i] = telemetry(i, id=ev.id, latency_ms=ev.latency_ms * 1.8, ttft_ms=ev.latency_ms * 0.36)
    # The second model's probes end when the first's do: both still report.
    other = probes(BASELINE_N + 100, seed=2, model="org/other:1")
    late = timedelta(seconds=2 * (len(main) - len(other)))
    return [fresh(e) for e in main] + [fresh(structs.replace(e, ts=e.ts + late)) for e in other]


@pytest.fixture
async def site(
    persisting_api: Api, js: JetStreamContext, nats_url: str, database_url: str
) -> AsyncIterator[Site]:
    api = persisting_api
    async with running_engine(nats_url), live_alerter(database_url, nats_url, js):
        dated = Site(api, "", offset=offset_to_now())
        fresh = dated.fresh
        events = _events(fresh)
        acks = [
            await js.publish_async(
                subjects.telemetry(e.provider, e.model), codec.encode(e), headers={"Nats-Msg-Id": e.id}
            )
            for e in events
        ]
        await asyncio.gather(*acks)

        async def charted() -> bool:
            page = await api.store.violations(ViolationFilter(severities=("critical",), limit=50))
            rules = {v.rule for v in page.items}
            return "AVAILABILITY" in rules and bool(rules & {"CUSUM", "SPIKE", "TAIL"})

        await eventually(charted, within=90, what="the engine's critical violations in Postgres")

        async def incident() -> bool:
            return bool((await api.runtime.alerting.incidents(IncidentFilter(limit=1))).items)

        await eventually(incident, within=60, what="the alerter's incident in Postgres")
        # One of each severity the page filters on, known ids for the tests to open. Its point is
        # the stored probe, its value that probe's latency (it read 1,500 ms, its point 103 ms,
        # the probe 1,331 ms); limits like the engine's for this model (center ~840 ms), so the
        # mini-chart reads true.
        point = next(e for e in events if e.id == f"p1-{SHIFT_AT + 5:05d}")
        assert point.latency_ms is not None
        seeded = violation(
            point,
            id="v-browser",
            rule="CUSUM",
            rule_name="sustained shift up",
            value=point.latency_ms,
            deviation_sigma=(point.latency_ms - 840.0) / 120.0,
            limits=limits(center=840.0, sigma=120.0),
            baseline=BaselineRef(id="b1", n=BASELINE_N),
        )
        async with api.store.pool.acquire() as conn:
            await store_violations(conn, [seeded])
        server = uvicorn.Server(
            uvicorn.Config(api.app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        await eventually(lambda: server.started, within=20, what="uvicorn to listen")
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield Site(api, f"http://127.0.0.1:{port}", offset=dated.offset)
        finally:
            api.runtime.live.close_all()  # open event streams would hold uvicorn's shutdown
            server.should_exit = True
            await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def browser_page(site: Site, *, javascript: bool = True) -> AsyncIterator[Page]:
    """A page in a fresh Chromium; ``javascript=False``: with scripts off (htmx's forms post
    whole pages)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport=VIEWPORT, java_script_enabled=javascript)  # type: ignore[arg-type]

            def console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    site.errors.append(f"console: {message.text}")

            def answered(response: Response) -> None:
                if response.status >= 500:
                    site.errors.append(f"{response.status}: {response.url}")

            page.on("console", console)
            page.on("pageerror", lambda e: site.errors.append(f"page error: {e}"))

            def failed(request: Request) -> None:
                # Leaving a page aborts its event stream and any panel still loading (a lazily
                # loaded settings panel, seen once under CI load): the browser cancelled them, no
                # server failed. A refused or broken answer still shows up in ``answered``.
                if request.failure == "net::ERR_ABORTED":
                    return
                site.errors.append(f"failed: {request.method} {request.url}")

            page.on("requestfailed", failed)
            page.on("response", answered)
            yield page
        finally:
            await browser.close()


async def log_in(page: Page, site: Site, next_path: str = "/") -> None:
    await page.goto(f"{site.url}/login?next={next_path}")
    await page.fill("input[name=key]", API_KEY)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{site.url}{next_path}*")


async def shot(page: Page, name: str) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


async def test_login_and_overview(site: Site) -> None:
    async with browser_page(site) as page:
        await page.goto(f"{site.url}/")
        await page.wait_for_selector("input[name=key]")
        assert await page.locator("nav").count() == 0  # the login page shows no navigation
        await shot(page, "login")
        await page.fill("input[name=key]", "not the key at all")
        await page.click("button[type=submit]")
        await page.wait_for_selector("text=That is not the API key")
        assert site.errors == [
            "console: Failed to load resource: the server responded with a status of 401 (Unauthorized)"
        ]
        site.errors.clear()  # the refused key's 401, on purpose
        await log_in(page, site)
        rows = page.locator("#overview tbody tr")
        await rows.first.wait_for()
        # The model with the outage and the shift is the worst: first.
        assert "llama3.1:8b" in await rows.first.inner_text()
        assert await page.locator("svg.sparkline").count() >= 2
        budget = await page.locator(".summary-figures .budget").inner_text()
        assert "FALSE-ALARM BUDGET" in budget.upper(), budget
        assert "armed chart" in budget, budget
        await shot(page, "overview")

        # Live: a violation published on the bus reaches the tab's event stream, and the overview
        # re-reads itself for it (its fallback poll is 30 s away).
        await page.evaluate(
            """() => { window.seen = [];
                document.body.addEventListener('htmx:sseMessage', e => window.seen.push(e.detail.type)); }"""
        )
        await page.wait_for_function(
            "() => htmx.find('body') && document.body['htmx-internal-data']?.sseEventSource?.readyState === 1"
        )
        # An outage as the engine signals it: three failed probes in a row.
        down = [site.fresh(telemetry(SHIFT_AT + 9 + i, id=f"live-{i}")) for i in range(3)]
        _, live = await availability_violation(down, range(3), "v-live")
        async with page.expect_request(lambda r: r.url.startswith(f"{site.url}/?hours=")) as reread:
            await Publisher(site.api.runtime.nc.jetstream()).publish(  # type: ignore[union-attr]
                subjects.violations(live.provider, live.model, live.rule), live
            )
        assert (await reread.value).headers.get("hx-request") == "true"
        assert "status" in await page.evaluate("() => window.seen")
    assert site.errors == [], "\n".join(site.errors)


async def test_dashboard_chart_availability_and_comparison(site: Site) -> None:
    async with browser_page(site) as page:
        await log_in(page, site, "/dashboard")
        chart = page.locator("svg.control-chart")
        await chart.wait_for()
        assert await chart.locator("circle.point").count() > 100
        await chart.locator("line.center").wait_for(state="attached")
        assert await chart.locator("line.limit").count() == 2
        outage = page.locator("svg.availability-chart rect.outage-band")
        assert await outage.count() >= 1
        assert await page.locator("#rule-CUSUM").is_visible()
        await shot(page, "dashboard")
        # Live: a probe the persister stores reaches the tab as its model's point event, and the
        # chart re-reads itself for it (its fallback poll is 30 s away).
        await page.evaluate(
            """() => { window.seen = [];
                document.body.addEventListener('htmx:sseMessage', e => window.seen.push(e.detail.type)); }"""
        )
        await page.wait_for_function(
            "() => document.body['htmx-internal-data']?.sseEventSource?.readyState === 1"
        )
        # Dated now: the site's data ends when it was seeded, maybe under 2 s ago, and a point
        # dated after the chart's re-read (a window ends at now) is rightly not drawn yet.
        probe = telemetry(SHIFT_AT + 60, id="p1-live", latency_ms=777.7, ttft_ms=250.0, ts=datetime.now(UTC))
        name = point_event(probe.provider, probe.model)
        async with page.expect_request(lambda r: r.url.startswith(f"{site.url}/dashboard?")) as reread:
            await Publisher(site.api.runtime.nc.jetstream()).publish(  # type: ignore[union-attr]
                subjects.telemetry(probe.provider, probe.model), probe
            )
            await page.wait_for_function(f"() => window.seen.includes('{name}')")
        assert (await reread.value).headers.get("hx-request") == "true"
        await page.wait_for_function(
            """() => [...document.querySelectorAll('svg.control-chart circle.point title')]
                .some(t => t.textContent.endsWith(' 777.7'))"""
        )
        # Switching the metric swaps the panel in place.
        await page.select_option("select[name=metric]", "ttft_ms")
        await page.wait_for_selector("svg.control-chart[aria-label*=ttft_ms]")
        # A maintenance window under way on the first model: a grey band on the comparison.
        await site.api.runtime.alerting.create_silence(
            SilenceInput(
                reason="driver update",
                author="ops",
                kind="maintenance",
                models=["llama3*"],
                starts_at=datetime.now(UTC) - timedelta(minutes=3),
                ends_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        await page.goto(f"{site.url}/compare?hours=1")
        await page.locator("svg.comparison-chart polyline.compare-line").nth(1).wait_for()
        assert await page.locator("svg.comparison-chart rect.maintenance-band").count() == 1
        assert await page.locator("svg.comparison-chart polygon.p95-band").count() >= 2  # both models
        await shot(page, "compare")
        # One line per prompt of one model: chosen in the form, swapped in place.
        async with page.expect_response(lambda r: "lines=prompt" in r.url):
            await page.select_option("select[name=lines]", "prompt")
        await page.locator("#compare-card .chart-key li", has_text=" · ").first.wait_for()
        await shot(page, "compare-prompts")
    assert site.errors == [], "\n".join(site.errors)


async def test_acknowledge_from_the_violation_page_shows_a_toast(site: Site) -> None:
    async with browser_page(site) as page:
        await log_in(page, site, "/violations/v-browser")
        await page.locator("svg.mini-chart circle.point.pattern").first.wait_for(state="attached")
        await shot(page, "violation")
        await page.fill("#actions input[name=by]", "ana")
        await page.click("#actions button:has-text('Acknowledge')")
        toast = page.locator("#toasts .toast-ok")
        await toast.wait_for()
        assert "Violation acknowledged by ana." in await toast.inner_text()
        await page.wait_for_selector("#actions >> text=Acknowledged by")
        await shot(page, "violation-acknowledged")
    assert site.errors == [], "\n".join(site.errors)
    stored = await site.api.store.violation("v-browser")
    assert stored is not None
    assert stored.violation.acknowledged_by == "ana"


async def test_settings_save_shows_the_error_under_its_field(site: Site) -> None:
    async with browser_page(site) as page:
        await log_in(page, site, "/settings")
        await page.fill("#section-email input[name=by]", "ana")  # who saves: kept for the next save
        await page.fill("#f-alert-email-smtp_port", "seventy")
        await page.click("#section-email button[type=submit]")
        error = page.locator("#f-alert-email-smtp_port-error")
        await error.wait_for()
        assert (await error.inner_text()).startswith("SMTP port:")
        await page.locator("#toasts .toast-error").wait_for()
        await shot(page, "settings-error")
        await page.fill("#f-alert-email-smtp_port", "465")
        await page.click("#section-email button[type=submit]")
        await page.locator("#toasts .toast-ok").wait_for()
        assert await page.locator("#f-alert-email-smtp_port-error").count() == 0
        await page.goto(f"{site.url}/settings")
        await shot(page, "settings")
    assert site.errors == [], "\n".join(site.errors)
    values = {s.key: s.value for s in await site.api.store.settings()}
    assert values["alert.email.smtp_port"] == 465


async def focused_name(page: Page) -> str | None:
    return await page.evaluate("document.activeElement && document.activeElement.name")  # type: ignore[no-any-return]


async def test_setup_wizard_refused_save_keeps_what_was_typed(site: Site) -> None:
    """The wizard's groups: the email and notify groups open, the optional channels folded; a
    refusal opens the group of the bad field and focuses it, even a group that was folded."""
    async with browser_page(site) as page:
        await log_in(page, site, "/setup")
        assert await page.locator("#group-email").get_attribute("open") is not None
        assert await page.locator("#group-policy").get_attribute("open") is not None
        assert not await page.locator("input[name='alert.slack.channel']").is_visible()
        assert not await page.locator("select[name='alert.tickets.tracker']").is_visible()
        await shot(page, "setup")
        await page.fill("#wizard input[name=by]", "ana")
        await page.fill("input[name='alert.email.smtp_host']", "smtp.typed.example")
        await page.fill("input[name='alert.email.smtp_port']", "seventy")
        await page.fill("input[name='alert.email.smtp_password']", "pa55word")
        await page.click("#wizard form button[type=submit]:has-text('Save')")
        await page.locator("p.field-error").wait_for()
        assert "alert.email.smtp_port" in await page.locator("p.field-error").inner_text()
        assert await page.input_value("input[name='alert.email.smtp_host']") == "smtp.typed.example"
        assert await page.input_value("input[name='alert.email.smtp_port']") == "seventy"
        assert await page.input_value("input[name='alert.email.smtp_password']") == ""
        await page.locator("#toasts .toast-error").wait_for()
        assert await focused_name(page) == "alert.email.smtp_port"
        await page.locator("p.field-error").scroll_into_view_if_needed()
        await shot(page, "setup-refused")
        # A tracker chosen in the folded Tickets group, without its project: refused, that group
        # comes back open (after htmx's swap) with its bad field focused.
        await page.click("#group-tickets summary")
        await page.select_option("select[name='alert.tickets.tracker']", "github")
        await page.fill("input[name='alert.email.smtp_port']", "465")
        await page.click("#wizard form button[type=submit]:has-text('Save')")
        await page.locator("#group-tickets .field-error").first.wait_for()
        assert await page.locator("#group-tickets").get_attribute("open") is not None
        bad = await page.locator("#group-tickets [aria-invalid=true]").first.get_attribute("name")
        assert bad is not None
        assert bad.startswith("alert.tickets.")
        await page.wait_for_function(f"document.activeElement && document.activeElement.name === {bad!r}")
        await shot(page, "setup-refused-tickets")
    assert site.errors == [], "\n".join(site.errors)
    values = {s.key: s.value for s in await site.api.store.settings()}
    assert values["alert.email.smtp_host"] != "smtp.typed.example"  # nothing of it was saved


async def test_the_name_saved_under_is_offered_on_the_next_form(site: Site) -> None:
    """The ``by`` cookie set by an htmx save is kept by the browser and prefills the next form."""
    async with browser_page(site) as page:
        await log_in(page, site, "/setup")
        assert await page.input_value("#wizard input[name=by]") == ""
        await page.fill("#wizard input[name=by]", "ana")
        await page.select_option("select[name='alert.min_severity']", "warning")
        await page.click("#wizard form button[type=submit]:has-text('Save')")
        await page.locator("#toasts .toast-ok, #wizard p.ok").first.wait_for()
        await page.goto(f"{site.url}/settings")
        names = await page.eval_on_selector_all("input[name=by]", "els => els.map(e => e.value)")
        assert names
        assert set(names) == {"ana"}
        await page.fill("#section-policy input[name=by]", "bo")  # still editable
    assert site.errors == [], "\n".join(site.errors)


async def test_a_refused_page_save_shows_its_name_in_its_own_section_only(site: Site) -> None:
    """Without scripts a section's save posts the whole page; refused, it came back with the
    refused form's name in every section's "Saved by". Only the section sent shows it; the others
    keep the name this browser saved under before (``settings-refused-nojs.png``)."""
    async with browser_page(site, javascript=False) as page:
        await log_in(page, site, "/settings")
        await page.fill("#section-policy input[name=by]", "sam")
        await page.click("#section-policy button[type=submit]")
        await page.wait_for_load_state()
        assert "Saved." in await page.locator("#section-policy").inner_text()
        await page.fill("#section-email input[name=by]", "eve")
        await page.fill("#f-alert-email-smtp_port", "seventy")
        async with page.expect_response(lambda r: r.url.endswith("/settings/section/email")) as answer:
            await page.click("#section-email button[type=submit]")
        assert (await answer.value).status == 422
        await page.wait_for_load_state()
        assert (await page.locator("#f-alert-email-smtp_port-error").inner_text()).startswith("SMTP port:")
        names = await page.eval_on_selector_all(
            "section.settings-section",
            """all => Object.fromEntries(all.filter(s => s.querySelector('input[name=by]'))
                .map(s => [s.id, s.querySelector('input[name=by]').value]))""",
        )
        assert names.pop("section-email") == "eve"
        assert len(names) > 3
        assert set(names.values()) == {"sam"}, names
        await page.locator("#section-email").scroll_into_view_if_needed()
        await shot(page, "settings-refused-nojs")
    # The refusal itself (a 422 page) is all the console logs.
    refused = "console: Failed to load resource: the server responded with a status of 422"
    assert [e for e in site.errors if not e.startswith(refused)] == [], site.errors


async def test_an_incidents_heading_counts_what_changed_in_it(site: Site) -> None:
    """The real alerter's incident: its heading counts the violations that joined it after the
    first, its acknowledgement and resolution, never its analyses (``incident.png``)."""
    found = await site.api.runtime.alerting.incidents(IncidentFilter(limit=1))
    async with browser_page(site) as page:
        await log_in(page, site, f"/incidents/{found.items[0].id}")
        heading = page.locator("main .revision")
        said = (await heading.inner_text()).strip()
        title = await heading.get_attribute("title")
        assert title is not None
        assert re.match(r"revision \d+, the alerter's latest publication of it \(", title), title
        # What changed, read off the same page: its violations, its acknowledgement, its state.
        main = await page.locator("main").inner_text()
        members = await page.locator("main table.violations tbody tr:not(:has(td.empty))").count()
        if m := re.search(r"(\d+) violation\(s\) not stored by this API", main):
            members += int(m.group(1))
        assert members >= 1
        state = await page.locator("#actions p b").first.inner_text()
        joined = members - 1
        changes = joined + ("Acknowledged by" in main) + (state == "resolved")
        if changes == 0:
            assert said == "unchanged since it opened"
        else:
            assert said.startswith(
                f"changed {changes} time{'' if changes == 1 else 's'} since it opened ("
            ), said
        if joined:
            assert f"{joined} violation{'' if joined == 1 else 's'} joined" in said
        await shot(page, "incident")
    assert site.errors == [], "\n".join(site.errors)


async def test_an_incidents_analysis_wraps_in_its_card(site: Site) -> None:
    """Its lines once ran past the card (a 1366-px page scrolled sideways): on a phone, where every
    line is longer than the card, each wraps inside it."""
    async with browser_page(site) as page:
        await log_in(page, site, "/incidents?severity=warning")
        await page.set_viewport_size(WALK_VIEWPORTS["phone"])  # type: ignore[arg-type]
        await page.locator("a[href^='/incidents/inc-']").first.click()
        await page.locator("main pre").first.wait_for()
        overflowing = await page.eval_on_selector_all(
            "main pre", "all => all.filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.scrollWidth)"
        )
        assert overflowing == []
        assert await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth") <= 0
    assert site.errors == [], "\n".join(site.errors)


async def test_report_and_other_pages_render_cleanly(site: Site) -> None:
    async with browser_page(site) as page:
        await log_in(page, site, "/report?hours=24")
        await page.locator("#report-violations tbody tr").first.wait_for()
        assert await page.locator("#report-incidents a[href^='/incidents/']").count() >= 1
        assert await page.locator("svg.comparison-chart").count() == 1
        await shot(page, "report")
        await page.emulate_media(media="print")
        assert not await page.locator("nav").is_visible()
        await page.emulate_media(media="screen")
        async with page.expect_download() as download:
            await page.click("a:has-text('Violations CSV')")
        csv_path = await (await download.value).path()
        assert "CUSUM" in await asyncio.to_thread(Path(csv_path).read_text)
        for path, name in (
            ("/silences", "silences"),
            ("/models", "models"),
            ("/violations", "violations"),
            ("/incidents?severity=warning", "incidents"),
        ):
            await page.goto(f"{site.url}{path}")
            await page.wait_for_selector("main .card")
            await shot(page, name)
        # The models table fits the page at 1400 px: nothing scrolls sideways.
        await page.goto(f"{site.url}/models")
        await page.wait_for_selector("#models")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
    assert site.errors == [], "\n".join(site.errors)


# The page of the engine's first AVAILABILITY violation (the site's outage): its id is the engine's.
AVAILABILITY_PAGE = "/violations/{availability}"


async def availability_figures_wrong(page: Page) -> list[str]:
    """What an availability violation's page says wrong of its figures: a baseline failure rate
    that is no percentage in (0, 100] (a latency chart's limits once read "10,000.00 %"; the
    engine's baseline still collecting once read "0.00 %"), an alarm threshold neither a run of
    failed probes nor such a percentage of the window ("100.0 % of the window" while no rate
    was known), a value that is no count of failed probes (a run, or failures in the window)."""
    figures = {}
    for name in ("Value", "Baseline failure rate", "Alarm threshold"):
        cell = page.locator(f"table.kv tr:has(th:text-is('{name}')) td")
        figures[name] = (await cell.inner_text()).strip() if await cell.count() == 1 else None
    wrong = []
    rate = re.fullmatch(r"([\d.,]+) %", figures["Baseline failure rate"] or "")
    if not (rate and 0 < float(rate[1].replace(",", "")) <= 100) and not (
        figures["Baseline failure rate"] or ""
    ).startswith("not known yet"):
        wrong.append(f"baseline failure rate {figures['Baseline failure rate']!r}")
    share = re.fullmatch(
        r"(?:\d+ failed probes in the last \d+ \()?([\d.,]+) % of the window(?: failing|\))",
        figures["Alarm threshold"] or "",
    )
    if not (share and 0 < float(share[1].replace(",", "")) <= 100) and not re.fullmatch(
        r"\d+ failed probes in a row|–", figures["Alarm threshold"] or ""
    ):
        wrong.append(f"alarm threshold {figures['Alarm threshold']!r}")
    if not re.fullmatch(r"\d+ failed probes?(?: in a row| in the last \d+)?", figures["Value"] or ""):
        wrong.append(f"value {figures['Value']!r}")
    return wrong


# The walkthrough of a new user: each page at a laptop's 1366x768 and a phone's 390 px width.
WALK_VIEWPORTS = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
WALK_PAGES = (
    ("/", "overview"),
    ("/dashboard", "dashboard"),
    ("/compare?hours=1", "compare"),
    ("/violations", "violations"),
    ("/violations/v-browser", "violation"),
    (AVAILABILITY_PAGE, "violation-availability"),
    ("/models", "models"),
    ("/incidents?severity=warning", "incidents"),
    ("/report?hours=24", "report"),
    ("/settings", "settings"),
    ("/setup", "setup"),
)
# Whatever reaches past the viewport's right edge without a scroller of its own around it.
WIDE = """() => [...document.querySelectorAll('body *')].filter(el => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= window.innerWidth + 1) return false;
    for (let p = el.parentElement; p; p = p.parentElement) {
        const o = getComputedStyle(p).overflowX;
        if (o === 'auto' || o === 'scroll' || o === 'hidden') return false;
    }
    return true;
}).map(el => el.tagName + (el.id ? '#' + el.id : '') + '.' + [...el.classList].join('.')).slice(0, 5)"""
# The labels under each chart's plot: [left, right] of each, left to right, per chart.
TIME_LABELS = """() => [...document.querySelectorAll('svg')].map(svg => {
    const ticks = [...svg.querySelectorAll('text.tick')];
    const bottom = Math.max(...ticks.map(t => +t.getAttribute('y')));
    return ticks.filter(t => +t.getAttribute('y') === bottom)
        .map(t => { const r = t.getBoundingClientRect(); return [r.left, r.right, t.textContent]; })
        .sort((a, b) => a[0] - b[0]);
}).filter(labels => labels.length > 1)"""

# Shown charts whose time axis has a single label: no scale to read (a phone's control, availability
# and comparison charts once showed "21:30" alone under 9 minutes of probes).
LONE_TIME_LABEL = """() => [...document.querySelectorAll('svg')]
  .filter(svg => svg.getClientRects().length).map(svg => {
    const ticks = [...svg.querySelectorAll('text.tick')];
    const bottom = Math.max(...ticks.map(t => +t.getAttribute('y')));
    return [svg.classList[0], ticks.filter(t => +t.getAttribute('y') === bottom).map(t => t.textContent)];
}).filter(([, labels]) => labels.length === 1)"""

# The least share of a phone's control or comparison chart that is plot (main drew 0.56, 0.75).
PHONE_PLOT_SHARE = 0.8
# Layout defects a walk found, measured: [what, detail] for each.
LAYOUT = """() => {
    const PHONE_PLOT_SHARE = {share};
    const out = [];
    // A filter's labels on one row start on one line (a text box once sat taller than a dropdown).
    for (const form of document.querySelectorAll('form.selectors')) {
        const boxes = [...form.querySelectorAll(':scope > label')].map(l => l.getBoundingClientRect());
        const row = boxes.filter(b => Math.abs(b.bottom - boxes[0].bottom) < 2).map(b => b.top);
        if (Math.max(...row) - Math.min(...row) >= 1)
            out.push(['filter labels on one row start at different heights', row]);
    }
    // The acknowledge form is not glued to the statistics above it.
    const grid = document.querySelector('.grid2'), actions = document.querySelector('#actions form');
    if (grid && actions) {
        const gap = actions.getBoundingClientRect().top - grid.getBoundingClientRect().bottom;
        if (gap < 8) out.push(['the violation form sits on the table above it', gap]);
    }
    // A heading that follows a table keeps clear of it (the violation page's context heading).
    for (const h of document.querySelectorAll('table + h2, .table-wrap + h2')) {
        const gap = h.getBoundingClientRect().top - h.previousElementSibling.getBoundingClientRect().bottom;
        if (gap < 8) out.push(['a heading sits on the table above it', `${h.textContent.trim()} ${gap}`]);
    }
    // A chart is drawn to its card's width, not wider (on a phone charts once scrolled sideways
    // inside their cards), and its axis labels stay legible once scaled to it.
    const charts = 'svg.control-chart, svg.comparison-chart, svg.availability-chart, svg.mini-chart';
    for (const svg of document.querySelectorAll(charts)) {
        const card = svg.closest('.card');
        if (!card || !svg.getClientRects().length) continue;  // not shown (a report's chart for paper)
        const cs = getComputedStyle(card);
        const inner = card.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
        const drawn = svg.getBoundingClientRect().width;
        if (drawn > inner + 1)
            out.push(['a chart is wider than its card', `${svg.classList[0]} ${drawn} > ${inner}`]);
        const scale = drawn / svg.viewBox.baseVal.width;
        const px = [...svg.querySelectorAll('text')]
            .map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
        const least = Math.min(...px);
        if (px.length && least < 9)
            out.push(["a chart's labels are too small", `${svg.classList[0]} ${least.toFixed(1)} px`]);
    }
    // On a phone the control chart's plot takes most of its width (fixed laptop margins left it
    // 56 %, about 190 px), and the availability chart under it keeps the same plot: time lines up.
    const plot = sel => {
        const rect = document.querySelector(`${sel} rect.plot-bg`);
        const box = rect && rect.ownerSVGElement.viewBox.baseVal;
        return rect && [rect.x.baseVal.value, rect.width.baseVal.value, box.width];
    };
    const control = plot('svg.control-chart'), availability = plot('svg.availability-chart');
    // The comparison chart the same (the compare page's and the report's: it kept 75 %).
    const plots = 'svg.control-chart rect.plot-bg, svg.comparison-chart rect.plot-bg';
    for (const rect of document.querySelectorAll(plots)) {
        const svg = rect.ownerSVGElement, drawn = rect.width.baseVal.value, box = svg.viewBox.baseVal;
        if (window.innerWidth > 400 || !svg.getClientRects().length) continue;  // not shown: for paper
        if (drawn / box.width < PHONE_PLOT_SHARE)
            out.push([`a phone's ${svg.classList[0]} has a narrow plot`, `${drawn} of ${box.width}`]);
    }
    if (control && availability && (control[0] !== availability[0] || control[1] !== availability[1]))
        out.push(['the availability plot is not under the control plot', `${availability} vs ${control}`]);
    // A violation table's cells read whole: on a phone its ten columns once squeezed into the card
    // wrapped the time a word a line and a prompt a character a line, and scrolled in the card
    // (what happened, in the report's, may take lines: it is a sentence).
    for (const table of document.querySelectorAll('table.violations, #report-violations')) {
        const card = table.closest('.card');
        if (card && table.getBoundingClientRect().width > card.clientWidth)
            out.push(['a violation table is wider than its card', table.getBoundingClientRect().width]);
        for (const td of table.querySelectorAll('td')) {
            const label = getComputedStyle(td, '::before').content;
            if (!td.textContent.trim() && td.getClientRects().length && label !== 'none' && label !== '""')
                out.push(['an empty violation cell shows its label', label]);
            if (!td.textContent.trim() || !td.getClientRects().length) continue;
            const range = document.createRange();
            range.selectNodeContents(td);
            const lines = new Set([...range.getClientRects()].map(r => Math.round(r.bottom))).size;
            if ((lines > 2 && !td.classList.contains('v-detail')) || td.scrollWidth > td.clientWidth + 1)
                out.push(['a violation cell wraps or overflows', `${lines} lines: ${td.textContent.trim()}`]);
        }
    }
    // A phone's stacked table rows: every line of a row starts at the row's left edge (the
    // second line once started about 8 px right of the first).
    if (window.innerWidth <= 400) {
        const rows = 'table.violations tr, #report-violations tr, table.stack tr';
        for (const tr of document.querySelectorAll(rows)) {
            if (!tr.getClientRects().length || getComputedStyle(tr).display !== 'flex') continue;
            // Flex lines: cells whose boxes overlap vertically (baselines differ by font size).
            const boxes = [...tr.children].filter(td => td.getClientRects().length)
                .map(td => td.getBoundingClientRect()).filter(r => r.width > 0)
                .sort((a, b) => a.top - b.top);
            const lines = [];
            for (const r of boxes) {
                const line = lines[lines.length - 1];
                if (line && r.top < line.bottom - 1) {
                    line.left = Math.min(line.left, r.left); line.bottom = Math.max(line.bottom, r.bottom);
                } else lines.push({left: r.left, bottom: r.bottom});
            }
            const lefts = lines.map(l => l.left);
            if (lefts.length > 1 && Math.max(...lefts) - Math.min(...lefts) > 1) {
                const table = tr.closest('table');
                const where = `${table.id || table.className}: ${lefts.map(Math.round)}`;
                out.push(["a stacked row's lines start at different x", where]);
            }
        }
    }
    // Settings' Alerting cards: side by side where two fit, stacked otherwise.
    const tiles = document.querySelector('#alerting + .settings-grid');
    const cards = tiles ? [...tiles.children].map(c => c.getBoundingClientRect()) : [];
    if (cards.length > 1) {
        const fit = tiles.clientWidth >= 2 * 26 * 14 + 14;  // two 26rem cards and the gap
        const sideBySide = Math.abs(cards[0].top - cards[1].top) < 1 && cards[1].left > cards[0].right;
        if (fit !== sideBySide)
            out.push(['alerting cards', fit ? 'stacked on a wide screen' : 'side by side on a phone']);
    }
    return out;
}""".replace("{share}", str(PHONE_PLOT_SHARE))

# Figures a walk found misleading: [what, detail] for each.
FIGURES = """() => {
    const out = [];
    const text = el => el ? el.textContent.trim() : null;
    // A failure-rate chart has no sigma: an availability violation's σ once read "0.00".
    for (const tr of document.querySelectorAll('table.violations tbody tr')) {
        const sigma = text(tr.querySelector('td.v-sigma'));
        if (text(tr.querySelector('td.v-metric')) === 'availability' && sigma !== '–')
            out.push(["an availability violation's sigma", sigma]);
    }
    // A violation's value is its trigger's: the frozen statistics, the pattern's last point and the
    // probe in the context (they once read 1,500.00 ms, 103.00 ms and 1,331.08).
    const value = [...document.querySelectorAll('table.kv th')]
        .find(th => text(th) === 'Value')?.nextElementSibling;
    const trigger = document.querySelector('table.context tr.trigger td.this-metric');
    const point = document.querySelector('table.points tbody tr:last-child td:last-child');
    if (value && trigger && point) {
        const n = t => parseFloat(t.replace(/,/g, ''));
        const figures = [text(value), text(trigger), text(point)];
        if (new Set(figures.map(n)).size !== 1)
            out.push(["a violation's value and its probe's differ", figures]);
    }
    // A mini-chart's line never crosses failed probes (their red ticks): drawn across an outage
    // (v-cred's six timeouts) it read as answers during it.
    for (const svg of document.querySelectorAll('svg.mini-chart')) {
        const ticks = [...svg.querySelectorAll('line.failed-tick')].map(l => l.x1.baseVal.value);
        for (const line of svg.querySelectorAll('polyline.series')) {
            const xs = [...line.points].map(p => p.x);
            const crossed = ticks.filter(t => xs.some((x, i) => i > 0 && xs[i - 1] < t && t < x));
            if (crossed.length) out.push(["a mini-chart's line crosses failed probes", crossed.length]);
        }
    }
    // A probe that never answered has no timings and no generation speed.
    for (const tr of document.querySelectorAll('table.context tr.failed')) {
        for (const td of tr.querySelectorAll('td[data-label]')) {
            if (/ms|tokens/.test(td.dataset.label) && text(td) !== '–')
                out.push(['a failed probe shows a figure', `${td.dataset.label} ${text(td)}`]);
        }
    }
    return out;
}"""

# Pages whose every table reads whole on a phone: it fits its card (the report's status and
# incidents tables and the violation's context table once scrolled sideways inside theirs) and
# no cell wraps past 2 lines (a sentence may: what happened, an error, an analysis).
READ_WHOLE = ("report", "violation", "violation-availability", "incidents")
TABLES = """() => {
    const out = [];
    for (const table of document.querySelectorAll('main table')) {
        if (!table.getClientRects().length) continue;
        const card = table.closest('.card');
        const where = table.id || table.className;
        if (card && table.getBoundingClientRect().width > card.clientWidth)
            out.push(['a table is wider than its card', `${where} ${table.getBoundingClientRect().width}`]);
        for (const td of table.querySelectorAll('td, th')) {
            if (!td.textContent.trim() || !td.getClientRects().length) continue;
            if (td.matches('.v-detail, .error-text, .analysis-text')) continue;
            const range = document.createRange();
            range.selectNodeContents(td);
            const lines = new Set([...range.getClientRects()].map(r => Math.round(r.bottom))).size;
            if (lines > 2 || td.scrollWidth > td.clientWidth + 1)
                out.push(['a table cell wraps or overflows', `${where} ${lines} lines: ${td.textContent}`]);
        }
    }
    return out;
}"""


async def test_walk_every_page_at_laptop_and_phone_width(site: Site) -> None:
    """A new user's tour at 1366x768 and on a 390-px phone: nothing scrolls the page sideways
    (a wide table or chart scrolls inside its card), no time labels overprint each other, the
    layout defects of ``LAYOUT`` stay fixed, and a screenshot of each page
    (``walk-<device>-<page>.png``)."""
    found = await site.api.store.violations(ViolationFilter(rule="AVAILABILITY", limit=50))
    outage = [v for v in found.items if v.id != "v-live"][-1]  # the first
    async with browser_page(site) as page:
        await log_in(page, site)
        problems: list[str] = []
        for device, viewport in WALK_VIEWPORTS.items():
            await page.set_viewport_size(viewport)  # type: ignore[arg-type]
            for path, name in WALK_PAGES:
                await page.goto(f"{site.url}{path.format(availability=outage.id)}")
                await page.wait_for_selector("main .card")
                await page.wait_for_load_state("networkidle")
                await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
                await page.screenshot(path=str(SHOTS / f"walk-{device}-{name}.png"), full_page=True)
                sideways = await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
                if sideways > 0:
                    problems.append(f"{device} {name}: {sideways} px sideways {await page.evaluate(WIDE)}")
                problems += [
                    f"{device} {name}: {what} {detail}" for what, detail in await page.evaluate(LAYOUT)
                ]
                if name == "violation-availability":
                    problems += [f"{device} {name}: {w}" for w in await availability_figures_wrong(page)]
                problems += [
                    f"{device} {name}: {what} {detail}" for what, detail in await page.evaluate(FIGURES)
                ]
                if name in READ_WHOLE:
                    problems += [
                        f"{device} {name}: {what} {detail}" for what, detail in await page.evaluate(TABLES)
                    ]
                for chart, labels in await page.evaluate(LONE_TIME_LABEL):
                    problems.append(f"{device} {name}: {chart}'s time axis has one label {labels}")
                for labels in await page.evaluate(TIME_LABELS):
                    for (_, right, a), (left, _, b) in itertools.pairwise(labels):
                        if right > left:
                            problems.append(f"{device} {name}: time labels {a!r} and {b!r} overlap")
            # The overview on a phone: each model's status on one line. Its models are live (the
            # data is dated when the site is seeded: the tour's screenshots never show them stale).
            await page.goto(f"{site.url}/")
            assert "stopped reporting" not in await page.locator("main").inner_text()
            badge = page.locator("#overview tbody .status").first
            box = await badge.bounding_box()
            assert box is not None
            assert box["height"] < 30, (device, box)
            # Every model's row within the card, its name and reasons legible: on a phone the table
            # scrolled inside its card (latency now, open violations, incident and uptime out of
            # sight), its model cell squeezed to a word a line (7 lines).
            fit = await page.eval_on_selector(
                "table.overview",
                """table => {
                    const card = table.closest('.card');
                    const widths = [...table.querySelectorAll('tbody tr > td:nth-child(2)')]
                        .map(td => td.getBoundingClientRect().width);
                    return [card.scrollWidth - card.clientWidth,
                            table.getBoundingClientRect().width - card.clientWidth, Math.min(...widths)];
                }""",
            )
            assert fit[0] <= 0, (device, "the overview scrolls in its card", fit)
            assert fit[1] <= 0, (device, "the overview is wider than its card", fit)
            assert fit[2] >= 160, (device, "the overview's model cell is squeezed", fit)
        assert problems == [], "\n".join(problems)
    assert site.errors == [], "\n".join(site.errors)


async def test_the_incidents_page_fits_at_laptop_and_phone_width(site: Site) -> None:
    """The incidents table within its card at 1366 px and on a 390-px phone, each cell on at most
    2 lines and its opening time on one (on a phone the table scrolled inside its card, its
    "Opened" cell wrapped to 4 lines); screenshots ``incidents-<device>.png``."""
    async with browser_page(site) as page:
        await log_in(page, site, "/incidents")
        for device, viewport in WALK_VIEWPORTS.items():
            await page.set_viewport_size(viewport)  # type: ignore[arg-type]
            await page.goto(f"{site.url}/incidents")
            await page.wait_for_selector("table.incidents tbody a[href^='/incidents/inc-']")
            await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / f"incidents-{device}.png"), full_page=True)
            fit = await page.eval_on_selector(
                "table.incidents",
                """table => {
                    const card = table.closest('.card');
                    const opened = [...table.querySelectorAll('tbody a[href^="/incidents/inc-"]')].map(a => {
                        const range = document.createRange();
                        range.selectNodeContents(a.closest('td'));
                        return new Set([...range.getClientRects()].map(r => Math.round(r.bottom))).size;
                    });
                    return [card.scrollWidth - card.clientWidth, Math.max(...opened)];
                }""",
            )
            assert fit[0] <= 0, (device, "the incidents table scrolls in its card", fit)
            assert fit[1] == 1, (device, "an incident's opening time wraps", fit)
            assert await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth") <= 0
            problems = [f"{what} {detail}" for what, detail in await page.evaluate(TABLES)]
            assert problems == [], (device, problems)
    assert site.errors == [], "\n".join(site.errors)


async def test_public_status_page_at_phone_width(public_api: Api) -> None:
    """The public status page, anonymous, on a phone and a laptop: a model whose probes stopped
    says "stopped reporting" (it said "unknown" here while the signed-in pages said "stopped
    reporting"), the overall status is the worst health with the stopped one counted, the
    overall badge says the same, and nothing scrolls sideways (``public-status-<device>.png``)."""
    await seed_statuses(public_api)
    config = uvicorn.Config(
        public_api.app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, within=20, what="uvicorn to listen")
    site = Site(public_api, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}")
    try:
        async with browser_page(site) as page:
            for device, viewport in WALK_VIEWPORTS.items():
                await page.set_viewport_size(viewport)  # type: ignore[arg-type]
                await page.goto(f"{site.url}/status")
                await page.wait_for_selector("#status-list")
                await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
                await page.screenshot(path=str(SHOTS / f"public-status-{device}.png"), full_page=True)
                overall = (await page.locator(".status-overall .status").text_content() or "").strip()
                assert overall == "1 of 4 down · 1 stopped reporting"
                row = page.locator("tr", has_text="retired:1").locator(".status")
                assert (await row.text_content() or "").strip() == "stopped reporting"
                assert await page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
            await page.goto(f"{site.url}/badge/status.svg")
            assert "1 of 4 down · 1 stopped reporting" in await page.content()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
    assert site.errors == [], "\n".join(site.errors)


LONG_TARGET = "https://llm-gateway.inference.internal.example.com:8443/v1/openai"
LINE_BREAKS_JS = """cells => cells.map(td => {
    // Each place the cell's text goes on to a new line: [the character before, the one after].
    const chars = [];
    const walk = document.createTreeWalker(td, NodeFilter.SHOW_TEXT | NodeFilter.SHOW_ELEMENT);
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
        // A shortened URL's ellipsis is drawn by CSS: a character of its own.
        if (node.nodeType === Node.ELEMENT_NODE) {
            if (node.matches('.url-more')) chars.push(['…', Math.round(node.getBoundingClientRect().top)]);
            continue;
        }
        for (let i = 0; i < node.length; i++) {
            const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
            const rect = range.getBoundingClientRect();
            if (rect.width > 0) chars.push([node.data[i], Math.round(rect.top)]);
        }
    }
    const cuts = [];
    for (let i = 1; i < chars.length; i++) {
        if (chars[i][1] > chars[i - 1][1] + 2) cuts.push([chars[i - 1][0], chars[i][0]]);
    }
    return [td.textContent.trim(), cuts];
})"""


# On a phone: the health card scrolls nothing sideways, and each model's row shows its model,
# last probe, success and latency p50 within the card.
PHONE_HEALTH = """() => {
    const out = [];
    const box = document.querySelector('#health');
    if (box.scrollWidth > box.clientWidth) out.push(['scrolls sideways', box.scrollWidth, box.clientWidth]);
    const card = box.closest('.card');
    if (card.scrollWidth > card.clientWidth) out.push(['card scrolls', card.scrollWidth, card.clientWidth]);
    const right = card.getBoundingClientRect().right;
    for (const tr of document.querySelectorAll('table.health tbody tr')) {
        const cells = tr.querySelectorAll('td');
        for (const i of [0, 4, 7, 8]) {  // model, success, last probe, latency p50
            const r = cells[i].getBoundingClientRect();
            if (!r.width || r.right > right + 0.5)
                out.push(['hidden', i, cells[i].textContent.trim(), r.right, right]);
        }
    }
    return out;
}"""


# What reaches past its cell's content box (into its padding, or the next column) in the target
# and availability columns; a badge broken over lines as an inline box (its first line drawn
# without its right padding, up to the column's edge: "overflows by a few pixels" with another
# font); and whether the table scrolls in its card.
HEALTH_OVERFLOW = """() => {
    const out = [];
    for (const badge of document.querySelectorAll('table.health .badge')) {
        const lines = badge.getClientRects().length;
        if (lines > 1) out.push(['badge split', badge.textContent.trim(), lines]);
    }
    for (const td of document.querySelectorAll('table.health td.availability, table.health td.target')) {
        const box = td.getBoundingClientRect();
        if (!box.width) continue;
        const style = getComputedStyle(td);
        const left = box.left + parseFloat(style.paddingLeft);
        const right = box.right - parseFloat(style.paddingRight);
        for (const el of td.querySelectorAll('*')) {
            for (const r of el.getClientRects()) {
                if (r.width && (r.right > right + 0.5 || r.left < left - 0.5))
                    out.push([el.className, el.textContent.trim(), r.left, r.right, left, right]);
            }
        }
    }
    const health = document.querySelector('#health');
    if (health.scrollWidth > health.clientWidth)
        out.push(['scrolls', health.scrollWidth, health.clientWidth]);
    return out;
}"""


def wide_model_probes(start: datetime) -> list[TelemetryEvent]:
    """A model as people name them, probed on a URL, streaming, failing in four ways, its figures
    wide: 100 probes 10 s apart from ``start``, the widest row the Models page gets."""
    kinds = ("timeout", "http_5xx", "rate_limited", "empty_response")
    return [
        telemetry(
            i,
            id=f"wide-{i}",
            ts=start + timedelta(seconds=10 * i),
            provider="openai",
            model="gpt-4o-mini-2024-07-18",
            target="https://api.openai.com",
            streaming=True,
            tokens_per_s=123.4,
            **(
                {"status": kinds[i % 4], "latency_ms": None, "ttft_ms": None}
                if i % 5 == 0
                else {"latency_ms": 12345.6 + i, "ttft_ms": 1234.5}
            ),
        )
        for i in range(100)
    ]


async def test_the_models_health_table_fits_a_laptop_and_a_phone(site: Site) -> None:
    """At 1366 px the health table once scrolled inside its card (17 columns, the availability
    chart's line and the open violations cut off at the right): it fits, every column shown. On a
    390-px phone it scrolled sideways in its card, the success and everything after it out of
    sight: each model is a short stack (its model, last probe, success, latency p50 and open
    violations first, the rest in small type), within the card. A long URL target took nine lines
    of its cell: shortened, it takes at most three, with the whole URL in its title and copied
    whole from the cell; no target or badge reaches past its cell (``models-laptop.png``,
    ``models-phone.png``, ``models-phone-target.png``)."""
    # A model as people name them, probed on a URL, streaming, failing in four ways, last an
    # older probe (its time reads "3 min ago"): the widest a row gets.
    start = datetime.now(UTC) - timedelta(minutes=20)
    wide = wide_model_probes(start)
    # A target as a self-hosted gateway names it: the URL the table used to cut mid-word
    # ("gatewa|y.inference.inte|rnal").
    wide += [
        structs.replace(e, id=f"long-{e.id}", target=LONG_TARGET, ts=e.ts + timedelta(milliseconds=1))
        for e in wide[-10:]
    ]
    async with site.api.store.pool.acquire() as conn:
        await store_telemetry(conn, wide)
    async with browser_page(site) as page:
        await page.set_viewport_size(WALK_VIEWPORTS["laptop"])  # type: ignore[arg-type]
        await log_in(page, site, "/models")
        await page.wait_for_selector("#health table.health tbody tr")
        await page.wait_for_load_state("networkidle")
        await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "models-laptop.png"), full_page=True)
        # The "not charted yet" badge once drew its first line into the next column at 1366 px.
        assert await page.evaluate(HEALTH_OVERFLOW) == []
        for width in ("laptop", "phone"):
            await page.set_viewport_size(WALK_VIEWPORTS[width])  # type: ignore[arg-type]
            cuts = await page.eval_on_selector_all("table.health td:nth-child(2)", LINE_BREAKS_JS)
            assert any(LONG_TARGET in text for text, _ in cuts), cuts
            assert [text for text, _ in cuts if "https://api.openai.com" in text]
            long_cuts = [at for text, at in cuts if text == LONG_TARGET]
            assert long_cuts
            assert all(len(at) <= 2 for at in long_cuts), (width, long_cuts)  # 3 lines at most
            # A URL breaks after its scheme, before a dot, a slash, a colon: never inside a word
            # (nor its scheme's "//").
            mid_word = [
                (text, at)
                for text, at in cuts
                for before, after in at
                if (before.isalnum() and after.isalnum()) or before + after == "//"
            ]
            assert mid_word == [], (width, mid_word)
            if width == "phone":
                await page.screenshot(path=str(SHOTS / "models-phone.png"), full_page=True)
                await page.locator("table.health td", has_text="gateway").first.scroll_into_view_if_needed()
                await page.screenshot(path=str(SHOTS / "models-phone-target.png"))
                problems = await page.evaluate(PHONE_HEALTH)
                assert problems == [], problems
        # The whole URL: in the shortened cell's title, and what selecting the cell copies.
        cell = page.locator("table.health td:nth-child(2)", has_text="gateway").first
        assert await cell.locator(".url").get_attribute("title") == LONG_TARGET
        await cell.click(click_count=3)
        await page.keyboard.press("Control+C")
        await page.evaluate(
            "document.body.insertAdjacentHTML('beforeend', '<textarea id=pasted></textarea>')"
        )
        await page.focus("#pasted")
        await page.keyboard.press("Control+V")
        assert (await page.input_value("#pasted")).strip() == LONG_TARGET
        await page.evaluate("document.getElementById('pasted').remove()")
        await page.set_viewport_size(WALK_VIEWPORTS["laptop"])  # type: ignore[arg-type]
        scroll = await page.eval_on_selector("#health", "el => [el.scrollWidth, el.clientWidth]")
        assert scroll[0] <= scroll[1], f"the health table scrolls in its card: {scroll}"
        assert await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth") <= 0
        # Figures read on one line; the model, a URL target, the failures by kind and the
        # chart's line may wrap.
        wrapped = await page.eval_on_selector_all(
            "table.health td:not(:first-child):not(:nth-child(2)):not(.failures):not(.availability)",
            """cells => cells.filter(td => td.textContent.trim()).map(td => {
                const range = document.createRange(); range.selectNodeContents(td);
                const lines = new Set([...range.getClientRects()].map(r => Math.round(r.bottom))).size;
                return [lines, td.textContent.trim()];
            }).filter(([lines]) => lines > 2)""",
        )
        assert wrapped == [], wrapped
    assert site.errors == [], "\n".join(site.errors)
