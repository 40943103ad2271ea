"""An incident's metric move says its rule on the wire (``MetricMove.rule``, added later in
``incident.v1``): the dashboard words an outage's count by it, and infers it from the incident's
violations only for messages from before it."""

from __future__ import annotations

import re
from datetime import timedelta

import msgspec
from msgspec import structs

from llmscope.alerter.analysis import summarize
from llmscope.alerter.messages import Outage
from llmscope.api.incidents_store import UPSERT_INCIDENT, incident_record, store_incidents
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.incident import IncidentEvent, MetricMove
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from tests.api.alerting_harness import incident_event
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.engine_events import engine_violations, error_rate_violation, failed
from tests.web.test_failure_counts import SCATTERED
from tests.web.test_pages import login


def _incident(ev: ViolationEvent, incident: str, *more: ViolationEvent, **outages: Outage) -> IncidentEvent:
    summary, moves, rules = summarize([ev, *more], outages=outages)
    episodes = tuple(v.episode_id for v in (ev, *more))
    inc = incident_event(incident, 1, opened_at=ev.ts - timedelta(seconds=5), episode_ids=episodes)
    assert inc.analysis is not None
    return structs.replace(
        inc, analysis=structs.replace(inc.analysis, summary=summary, moves=moves, rules=rules)
    )


def _moves_row(page: str) -> str:
    found = re.search(r"<td>availability</td><td>[^<]*</td><td>([^<]*)</td>", page)
    assert found, page
    return found[1]


async def test_the_alerters_move_carries_the_rule_of_its_figure() -> None:
    """ERROR_RATE fired first (10 scattered failures in 50), then AVAILABILITY (4 in a row): the
    move is the first one's count and names its rule; raised to the 12 failures since the last
    success, a run, it names AVAILABILITY's."""
    down = {*range(41, 80, 3), *range(100, 106)}
    probes = [failed(p) if i in down else p for i, p in enumerate(telemetry(i) for i in range(130))]
    rate, run = [v for v in await engine_violations(probes, baseline_n=40) if v.state == "open"]
    assert (rate.rule, run.rule) == ("ERROR_RATE", "AVAILABILITY")
    (_, (move,), _) = summarize([rate, run])
    assert (move.observed, move.rule, move.rule_name) == (10.0, "ERROR_RATE", rate.rule_name)
    went_on = {run.episode_id: Outage(count=12, since=run.ts, last_success=None)}
    (_, (move,), _) = summarize([rate, run], outages=went_on)
    assert (move.observed, move.rule, move.rule_name) == (12.0, "AVAILABILITY", run.rule_name)


def test_old_and_new_messages_decode_both_ways() -> None:
    """A move from before the field decodes with no rule; a reader from before it (a struct
    without the fields) decodes a new move."""
    new = MetricMove(
        model="m", metric="availability", baseline=0.02, observed=10.0, deviation_sigma=0.0,
        rule="ERROR_RATE", rule_name=">= 10 failures in the last 50 probes",
    )  # fmt: skip
    old_json = msgspec.json.encode({k: v for k, v in msgspec.to_builtins(new).items() if "rule" not in k})
    assert msgspec.json.decode(old_json, type=MetricMove).rule == ""

    class OldMetricMove(msgspec.Struct, frozen=True, kw_only=True):
        model: str
        metric: str
        baseline: float
        observed: float
        change_percent: float | None = None
        deviation_sigma: float
        prompt_id: str = ""

    assert msgspec.json.decode(msgspec.json.encode(new), type=OldMetricMove).observed == 10.0


async def test_the_incident_page_words_an_outage_by_its_moves_rule(api: Api) -> None:
    """Its violations gone (retention keeps incidents longer, or they were never stored here):
    the move's own rule still says the count is failures in the window, not a bare count."""
    probes = [telemetry(i, id=f"e{i:03d}") for i in range(120)]
    probes, ev = await error_rate_violation(probes, SCATTERED, "v-rate")
    async with api.store.pool.acquire() as conn:
        await store_incidents(conn, [_incident(ev, "inc-wire")])
    page = (await (await login(api)).get("/incidents/inc-wire")).text
    assert _moves_row(page) == "10 failed probes in the last 50"


async def test_an_old_message_without_the_rule_is_worded_from_its_violations(api: Api) -> None:
    """An incident stored before ``MetricMove.rule``: the rule is inferred from its violations."""
    probes = [telemetry(i, id=f"o{i:03d}") for i in range(120)]
    probes, ev = await error_rate_violation(probes, SCATTERED, "v-old")
    record = list(incident_record(_incident(ev, "inc-old")))
    event = record[-1]
    for move in event["analysis"]["moves"]:
        del move["rule"], move["rule_name"]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [ev])
        await conn.executemany(UPSERT_INCIDENT, [tuple(record)])
        stored = await conn.fetchval("SELECT event FROM incidents WHERE id = 'inc-old'")
    assert "rule_name" not in str(stored)
    page = (await (await login(api)).get("/incidents/inc-old")).text
    assert _moves_row(page) == "10 failed probes in the last 50"


async def _rate_only() -> tuple[list[TelemetryEvent], ViolationEvent]:
    probes = [telemetry(i, id=f"r{i:03d}") for i in range(120)]
    return await error_rate_violation(probes, SCATTERED, "v-rate-run")


async def test_an_error_rate_count_raised_to_a_run_is_a_run_in_the_alerters_words() -> None:
    """A chart with only an ERROR_RATE violation (10 failures in the last 50) whose failures went
    on: raised to the 14 since the last success, the move is a run (``run``), and the summary
    says "in a row", never the window's words for that count."""
    _, ev = await _rate_only()
    went_on = {ev.episode_id: Outage(count=14, since=ev.ts, last_success=None)}
    summary, (move,), _ = summarize([ev], outages=went_on)
    assert (move.observed, move.run, move.rule) == (14.0, True, "ERROR_RATE")
    assert (
        "down: 14 failed probes in a row since the last success (ERROR_RATE fired at 10 in the last 50;"
        in summary
    ), summary
    # Not raised: the count is the violation's own, failures in its window.
    (_, (own,), _) = summarize([ev])
    assert (own.observed, own.run) == (10.0, False)


async def test_the_incident_page_words_a_raised_error_rate_count_as_a_run(api: Api) -> None:
    _, ev = await _rate_only()
    went_on = Outage(count=14, since=ev.ts, last_success=None)
    async with api.store.pool.acquire() as conn:
        await store_incidents(conn, [_incident(ev, "inc-run", **{ev.episode_id: went_on})])
    page = (await (await login(api)).get("/incidents/inc-run")).text
    assert _moves_row(page) == "14 failed probes in a row"


async def test_an_old_message_with_a_raised_error_rate_count_is_worded_as_a_run(api: Api) -> None:
    """A message from before ``MetricMove.rule``: no violation of the chart has its count, so the
    alerter raised it to the failures since the last success, a run."""
    probes, ev = await _rate_only()
    went_on = Outage(count=14, since=ev.ts, last_success=None)
    record = list(incident_record(_incident(ev, "inc-old-run", **{ev.episode_id: went_on})))
    for move in record[-1]["analysis"]["moves"]:
        del move["rule"], move["rule_name"]
        move.pop("run", None)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [ev])
        await conn.executemany(UPSERT_INCIDENT, [tuple(record)])
    page = (await (await login(api)).get("/incidents/inc-old-run")).text
    assert _moves_row(page) == "14 failed probes in a row"
