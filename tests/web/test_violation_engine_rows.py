"""An availability chart's violation page, on violations the real engine made: its Baseline row
is a sentence with the baseline's size and failure rate (it read "n=40, failure rate", the
engine's reason printed as it was, cut short), for the engine's events now and those it wrote
before (stored ones keep their reason); and its "points that formed the pattern" are the probes
the engine saw, or say why a point has no time or value when its probe is not stored (retention
removed it) instead of "–"."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

from msgspec import structs

from llmscope.proto.charts import AVAILABILITY, chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.availability import AvailabilityConfig
from llmscope.spc_engine.engine import Engine
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.engine_events import availability_violation, error_rate_violation, failed, store_seen
from tests.web.test_failure_counts import SCATTERED, cell
from tests.web.test_pages import HX, login

BASELINE_ROW = r"<tr><th>Baseline</th><td[^>]*>(.*?)</td></tr>"
GONE = "not stored"
GONE_NOTE = "Not stored: the probe is not among the stored ones (retention may have removed it)."


def _probes(prefix: str, n: int, model: str) -> list[TelemetryEvent]:
    return [telemetry(i, id=f"{prefix}{i:03d}", model=model) for i in range(n)]


def _points(page: str) -> list[list[str]]:
    """The rows of "Points that formed the pattern", each cell's text."""
    table = page.split('<table class="points">')[1].split("</table>")[0]
    body = table.split("<tbody>")[1]
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


async def _rebaselined() -> tuple[list[TelemetryEvent], ViolationEvent]:
    """An outage after a re-baseline by ann: the engine's event says who and why."""
    engine = Engine(availability=AvailabilityConfig(baseline_n=40))
    first = _probes("r", 50, "m-re")
    for ev in first:
        await engine.on_telemetry(ev)
    key = chart_key("ollama", "m-re", "local", "*", AVAILABILITY)
    engine.rebaseline(key, "ann", "proxy fixed", first[-1].ts)
    then = [telemetry(i, id=f"r{i:03d}", model="m-re") for i in range(50, 110)]
    then = [failed(e) if i >= 100 else e for i, e in enumerate(then, start=50)]
    found = [v for ev in then for v in await engine.on_telemetry(ev) if v.state == "open"]
    assert [v.rule for v in found][:1] == ["AVAILABILITY"], found
    return first + then, structs.replace(found[0], id="v-re", episode_id="v-re")


async def test_an_availability_violations_baseline_reads_as_a_sentence(api: Api) -> None:
    run_probes, run = await availability_violation(_probes("o", 60, "m-run"), range(45, 50), "v-run")
    rate_probes, rate = await error_rate_violation(_probes("e", 120, "m-rate"), SCATTERED, "v-rate")
    early_probes, early = await availability_violation(
        _probes("a", 20, "m-early"), range(10, 13), "v-early", baseline_n=40
    )
    re_probes, rebaselined = await _rebaselined()
    # As the engine wrote them before its reason said why: stored ones keep "failure rate".
    old = structs.replace(
        run, id="v-old", episode_id="v-old", baseline=structs.replace(run.baseline, reason="failure rate")
    )
    old_re = structs.replace(
        rebaselined,
        id="v-old-re",
        episode_id="v-old-re",
        baseline=structs.replace(rebaselined.baseline, reason="failure rate; proxy fixed"),
    )
    assert (run.baseline.n, round(run.limits.center * 100, 2)) == (40, 2.38)  # (0 + 1) / 42
    assert (rebaselined.baseline.created_by, rebaselined.baseline.reason) == ("ann", "proxy fixed")
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, run_probes + rate_probes + early_probes + re_probes, run, rate, early)
        await store_seen(conn, [], rebaselined, old, old_re)
    client = await login(api)
    want = {
        "v-run": "baseline of 40 probes, failure rate 2.38 %",
        "v-rate": "baseline of 40 probes, failure rate 2.38 %",
        "v-old": "baseline of 40 probes, failure rate 2.38 %",
        "v-early": "still collecting: 13 probes so far",
        "v-re": "baseline of 40 probes, failure rate 2.38 %; re-baselined by ann: proxy fixed",
        "v-old-re": "baseline of 40 probes, failure rate 2.38 %; re-baselined by ann: proxy fixed",
    }
    for vid, text in want.items():
        for headers in ({}, HX):
            page = (await client.get(f"/violations/{vid}", headers=headers)).text
            assert cell(page, BASELINE_ROW) == text, vid
            assert "n=40, failure rate" not in page


async def test_a_metric_charts_baseline_row_is_as_it_was(api: Api) -> None:
    """A latency chart's baseline keeps its id, size and reason."""
    point = telemetry(3)
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, [point], violation(point, id="v-lat"))
    page = (await (await login(api)).get("/violations/v-lat")).text
    assert re.fullmatch(r".+ \(n=\d+, initial baseline\)", cell(page, BASELINE_ROW))


async def test_the_error_rate_pattern_is_the_probes_the_engine_saw(api: Api) -> None:
    """The trigger of the engine's ERROR_RATE violation, with its time and status, and the probes
    around it: failures scattered among answers, as the engine saw them."""
    probes, ev = await error_rate_violation(_probes("e", 120, "m-rate"), SCATTERED, "v-rate")
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, probes, ev)
    page = (await (await login(api)).get("/violations/v-rate")).text
    trigger = next(p for p in probes if p.id == ev.point_ids[-1])
    assert _points(page) == [["1", trigger.id, trigger.ts.strftime("%Y-%m-%d %H:%M:%S UTC"), "timeout"]]
    assert "gone-note" not in page
    rows = re.findall(r'<tr class="([^"]*)">', page.split('<table class="context stack">')[1])
    assert len(rows) == 21  # ±10
    assert rows[10] == "trigger failed"
    failed_at = [i for i, r in enumerate(rows) if "failed" in r]
    assert len(failed_at) >= 6
    assert all(b - a == 3 for a, b in itertools.pairwise(failed_at))  # every third probe


async def test_a_pattern_point_whose_probe_is_gone_says_so(api: Api) -> None:
    """Retention removed the probes: the trigger keeps its time (the event's, the engine dates it
    by that probe) and says why it has no value, instead of "–"."""
    probes, ev = await error_rate_violation(_probes("g", 120, "m-gone"), SCATTERED, "v-gone")
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, [], ev)
    client = await login(api)
    for headers in ({}, HX):
        page = (await client.get("/violations/v-gone", headers=headers)).text
        trigger = next(p for p in probes if p.id == ev.point_ids[-1])
        assert trigger.ts == ev.ts
        assert _points(page) == [["1", trigger.id, ev.ts.strftime("%Y-%m-%d %H:%M:%S UTC"), GONE]]
        assert f'<p class="muted small gone-note">{GONE_NOTE}</p>' in page
        assert "No stored probes around this violation." in page


async def test_a_metric_patterns_points_missing_from_the_event_are_read_from_the_probes(api: Api) -> None:
    """An event without its points' times and values (written before the engine sent them): the
    stored probes give them; a probe retention removed says so."""
    points = [telemetry(i) for i in range(5)]
    ev = violation(
        points[-1],
        id="v-bare",
        point_ids=tuple(p.id for p in points),
        point_values=(),
        point_ts=(),
        ts=points[-1].ts + timedelta(seconds=1),
    )
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, points[1:], ev)  # the first is gone
    page = (await (await login(api)).get("/violations/v-bare")).text
    rows = _points(page)
    assert rows[0] == ["1", points[0].id, "–", GONE]
    assert GONE_NOTE in page
    for row, p in zip(rows[1:], points[1:], strict=True):
        assert p.latency_ms is not None
        assert row == [row[0], p.id, p.ts.strftime("%Y-%m-%d %H:%M:%S UTC"), f"{p.latency_ms:,.2f} ms"]
