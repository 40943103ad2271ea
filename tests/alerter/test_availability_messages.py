"""What every message says of an AVAILABILITY violation as the real SPC engine writes it.

While the engine collects a target's availability baseline it has no failure rate yet and writes
a rate of 0 (and an alarm share of 1): a message that printed the rate read "Baseline failure
rate 0.0%", a figure nobody measured. Once the baseline is in, the rate is a % and the run that
fires is longer for a flaky target (6 in a row at 7.1 %).
"""

from __future__ import annotations

import re
from datetime import timedelta

from llmscope.alerter.analysis import TelemetryPoint, summarize
from llmscope.alerter.messages import FailedProbe, IncidentRef, Outage
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.availability import AvailabilityConfig
from llmscope.spc_engine.engine import Engine
from tests.alerter.rendering import channel_texts
from tests.api.factories import telemetry
from tests.engine_events import availability_violation

BASELINE_N = 40
URL = "https://scope.example"
# A rate printed as zero: "0.0%", "0.00 %" (and never a "10.0%" or "30.0%").
ZERO_RATE = re.compile(r"(?<![\d.])0\.0+ ?%")


def _probes(n: int) -> list[TelemetryEvent]:
    return [telemetry(i, id=f"a{i:03d}") for i in range(n)]


async def _during_baseline() -> tuple[list[TelemetryEvent], ViolationEvent]:
    """Three probes failing in a row at the 11th-13th probe: 13 of the 40 baseline probes seen."""
    return await availability_violation(_probes(20), range(10, 13), "v-early", baseline_n=BASELINE_N)


async def _after_baseline() -> tuple[list[TelemetryEvent], ViolationEvent]:
    """Two failures among the 40 baseline probes (a (2 + 1) / 42 = 7.1 % rate), then a run: the
    engine fires at the 6th failure in a row, the run that rate needs."""
    return await availability_violation(_probes(60), (7, 19, *range(45, 52)), "v-late", baseline_n=BASELINE_N)


def _notification(ev: ViolationEvent, probes: list[TelemetryEvent]) -> Notification:
    # The target's failed probes since its last success, up to the violation.
    down: list[TelemetryEvent] = []
    for p in (p for p in probes if p.ts <= ev.ts):
        down = [*down, p] if p.status != "ok" else []
    outage = Outage(
        count=len(down),
        since=down[0].ts,
        last_success=down[0].ts - timedelta(seconds=2),
        recent=tuple(FailedProbe(p.ts, p.status, None, p.error) for p in reversed(down)),
    )
    incident = IncidentRef("inc-1", f"{ev.provider}/{ev.model}: probes failing (AVAILABILITY)", (ev.model,))
    return Notification(
        id="1:oncall:1",
        created_at=ev.ts + timedelta(seconds=5),
        reason="first",
        route="default",
        group_key="incident=inc-1",
        channel="oncall",
        public_url=URL,
        lead_episode_id=ev.episode_id,
        incident=incident,
        firing=(AlertView(ev, outage=outage, incident=incident),),
    )


def _texts(n: Notification) -> dict[str, str]:
    """What people read on every channel (``tests/alerter/rendering.py``): the email's Subject and
    body, Slack's blocks, the webhook's title and text, and the other channels' payloads."""
    return channel_texts(n)


def _analysis(ev: ViolationEvent, probes: list[TelemetryEvent], *, with_outage: bool) -> str:
    n = _notification(ev, probes)
    outage = n.firing[0].outage
    assert outage is not None
    points = [TelemetryPoint(p.id, p.ts, p.model, status=p.status) for p in probes if p.ts <= ev.ts]
    text, _, _ = summarize([ev], telemetry=points, outages={ev.episode_id: outage} if with_outage else None)
    return text


async def test_during_the_baseline_every_text_says_the_rate_is_not_known_yet() -> None:
    probes, ev = await _during_baseline()
    # What the engine writes: no rate, the baseline's probes so far, the run of 3.
    assert (ev.limits.center, ev.limits.ucl, ev.baseline.n, ev.value) == (0.0, 1.0, 13, 3.0)
    assert ev.rule_name == "3 failed probes in a row"
    texts = _texts(_notification(ev, probes))
    for channel, text in texts.items():
        assert "down: 3 failed probes in a row" in text, channel
        assert "baseline failure rate not known yet, 13 probes collected" in text, channel
        assert not ZERO_RATE.search(text), (channel, ZERO_RATE.search(text))
    assert "Baseline failure rate: not known yet (13 probes collected)" in texts["email.txt"]
    for with_outage in (True, False):
        text = _analysis(ev, probes, with_outage=with_outage)
        assert "baseline failure rate not known yet, 13 probes collected" in text, text
        assert not ZERO_RATE.search(text), text
    assert "down: 3 failed probes in a row since the last success (AVAILABILITY fired at 3;" in _analysis(
        ev, probes, with_outage=True
    )


async def test_after_the_baseline_every_text_says_the_rate_and_the_run_that_fired() -> None:
    probes, ev = await _after_baseline()
    assert round(ev.limits.center, 4) == round(3 / 42, 4)
    assert (ev.baseline.n, ev.value, ev.rule_name) == (40, 6.0, "6 failed probes in a row")
    texts = _texts(_notification(ev, probes))
    for channel, text in texts.items():
        assert "down: 6 failed probes in a row (baseline failure rate 7.1%)" in text, channel
        assert "not known yet" not in text, channel
    assert "Baseline failure rate: 7.1% over 40 probes" in texts["email.txt"]
    text = _analysis(ev, probes, with_outage=True)
    assert "down: 6 failed probes in a row since the last success (AVAILABILITY fired at 6; " in text, text
    assert "baseline failure rate 7.1% over 40 probes)." in text, text
    assert "down: 6 failed probes in a row (baseline failure rate 7.1%)." in _analysis(
        ev, probes, with_outage=False
    )


async def test_an_outage_signalled_again_after_a_re_baseline_says_the_run_it_fired_at() -> None:
    """A re-baseline while the target is down: the run goes on and the rule, back on its
    baseline's 3 in a row with no rate known, fires again at the next failed probe."""
    probes, late = await _after_baseline()
    engine = Engine(availability=AvailabilityConfig(baseline_n=BASELINE_N))
    for p in probes[:51]:  # up to the 6th failure in a row, which fired
        await engine.on_telemetry(p)
    assert engine.rebaseline(late.chart_key, "ann", "endpoint fixed", probes[51].ts) is not None
    (again,) = [v for v in await engine.on_telemetry(probes[51]) if v.state == "open"]
    assert (again.value, again.rule_name, again.limits.center) == (7.0, "3 failed probes in a row", 0.0)
    text = _texts(_notification(again, probes))["email.txt"]
    assert "down: 7 failed probes in a row (fires at 3 in a row; baseline failure rate not known yet" in text
    assert "Baseline failure rate: not known yet (" in text
