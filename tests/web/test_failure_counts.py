"""An availability chart's two rules count failed probes differently: AVAILABILITY a run of
them, ERROR_RATE failures scattered in its window. Every page that says the count says which,
on violations the real engine made: an ERROR_RATE alarm once read "10 failed probes in a row"
on the incident page, of probes that never failed twice running."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import timedelta

from msgspec import structs

from llmscope.alerter.analysis import summarize
from llmscope.alerter.messages import Outage
from llmscope.api.incidents_store import store_incidents
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.web.alerting import MetricMoveInfo
from tests.api.alerting_harness import incident_event
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.engine_events import availability_violation, engine_violations, error_rate_violation, failed
from tests.web.test_pages import login

# Every third probe fails after a clean 40-probe baseline: 10 failures in the last 50 probes is
# the engine's ERROR_RATE alarm at that baseline's rate (2.4 %); no two failures are adjacent.
SCATTERED = range(41, 120, 3)


async def stored(
    api: Api,
    ev: ViolationEvent,
    probes: list[TelemetryEvent],
    incident: str,
    *more: ViolationEvent,
    outages: Mapping[str, Outage] | None = None,
) -> None:
    """The probes, the violations and an incident of them with the alerter's own analysis."""
    summary, moves, rules = summarize([ev, *more], outages=outages)
    episodes = tuple(v.episode_id for v in (ev, *more))
    inc = incident_event(incident, 1, opened_at=ev.ts - timedelta(seconds=5), episode_ids=episodes)
    assert inc.analysis is not None
    inc = structs.replace(
        inc, analysis=structs.replace(inc.analysis, summary=summary, moves=moves, rules=rules)
    )
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [ev, *more])
        await store_incidents(conn, [inc])


def cell(page: str, pattern: str) -> str:
    found = re.search(pattern, page, re.S)
    assert found, pattern
    return html.unescape(re.sub(r"<[^>]+>", "", found[1])).strip()


async def test_an_error_rate_alarm_counts_failures_in_its_window_not_a_run(api: Api) -> None:
    probes = [telemetry(i, id=f"e{i:03d}") for i in range(120)]
    probes, ev = await error_rate_violation(probes, SCATTERED, "v-rate")
    assert (ev.value, ev.rule_name) == (10.0, ">= 10 failures in the last 50 probes")
    await stored(api, ev, probes, "inc-rate")
    client = await login(api)

    incident = (await client.get("/incidents/inc-rate")).text
    assert (
        "<td>availability</td><td>2.4 % of probes failing</td><td>10 failed probes in the last 50</td>"
        in incident
    )
    violation = (await client.get("/violations/v-rate")).text
    assert cell(violation, r"<tr><th>Value</th><td>(.*?)</td>") == "10 failed probes in the last 50"
    assert cell(violation, r'<td class="alarm-threshold">(.*?)</td>') == (
        "10 failed probes in the last 50 (20.0 % of the window)"
    )
    table = (await client.get("/violations")).text
    assert cell(table, r'<td class="value">(.*?)</td>') == "10 failed probes in the last 50"
    report = (await client.get("/report?hours=24")).text
    assert cell(report, r'<td class="detail-text v-detail">(.*?)</td>') == (
        "10 failed probes in the last 50 (>= 10 failures in the last 50 probes)"
    )
    for page in (incident, violation, table, report):
        assert "in a row" not in page


async def test_an_outage_is_a_run_on_every_page(api: Api) -> None:
    probes = [telemetry(i, id=f"o{i:03d}") for i in range(60)]
    probes, ev = await availability_violation(probes, range(45, 50), "v-run")
    await stored(api, ev, probes, "inc-run")
    client = await login(api)
    said = f"{ev.value:.0f} failed probes in a row"
    assert (
        "<td>availability</td><td>2.4 % of probes failing</td><td>" + said
        in (await client.get("/incidents/inc-run")).text
    )
    violation = (await client.get("/violations/v-run")).text
    assert cell(violation, r"<tr><th>Value</th><td>(.*?)</td>") == said
    assert cell(violation, r'<td class="alarm-threshold">(.*?)</td>') == ev.rule_name
    assert cell((await client.get("/violations")).text, r'<td class="value">(.*?)</td>') == said
    assert (
        cell((await client.get("/report?hours=24")).text, r'<td class="detail-text v-detail">(.*?)</td>')
        == said
    )


def test_a_move_whose_rule_is_not_known_says_a_bare_count() -> None:
    row = MetricMoveInfo("llama3.1:8b", "availability", 0.01, 3.0, None, 0.0)
    assert row.observed_text == "3 failed probes"


async def test_an_incident_of_both_rules_names_the_count_its_figure_is(api: Api) -> None:
    """ERROR_RATE fired first (10 scattered failures in 50), then AVAILABILITY (4 in a row): the
    analysis has one move for the chart, the first one's count, a count in the window. Once the
    alerter knows the outage went on to 12 failures since the last success, the move is that run."""
    down = {*range(41, 80, 3), *range(100, 106)}
    probes = [telemetry(i, id=f"x{i:03d}") for i in range(130)]
    probes = [failed(p) if i in down else p for i, p in enumerate(probes)]
    rate, run = [v for v in await engine_violations(probes, baseline_n=40) if v.state == "open"]
    assert (rate.rule, rate.value, run.rule, run.value) == ("ERROR_RATE", 10.0, "AVAILABILITY", 4.0)
    await stored(api, rate, probes, "inc-both", run)
    went_on = Outage(count=12, since=run.ts, last_success=None)
    await stored(api, rate, [], "inc-on", run, outages={run.episode_id: went_on})
    client = await login(api)
    both = (await client.get("/incidents/inc-both")).text
    assert "<td>2.4 % of probes failing</td><td>10 failed probes in the last 50</td>" in both
    # Its violations table says each one's own.
    values = [html.unescape(v) for v in re.findall(r'<td class="value">(.*?)</td>', both)]
    assert sorted(values) == ["10 failed probes in the last 50", "4 failed probes in a row"]
    on = (await client.get("/incidents/inc-on")).text
    assert "<td>2.4 % of probes failing</td><td>12 failed probes in a row</td>" in on
