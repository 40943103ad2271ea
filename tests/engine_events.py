"""Violations as the real SPC engine writes them, for the tests of what shows them (the
dashboard, which stores them directly; the alerter's messages).

The engine's own code (``llmscope.spc_engine.engine.Engine``, in-process, no NATS) charts the
probes, so an availability violation carries what the engine puts in one: its limits are the
baseline failure rate and the alarm's share of the window, its value a count of failed probes,
never a latency chart's milliseconds (a hand-built one once read "Baseline failure rate
10,000.00 %").

A page test stores the probes the engine saw with its violation (:func:`store_seen`): the page
reads the pattern and the probes around it from them (an ERROR_RATE violation stored without
them showed its trigger with no time or value, and the site's other outage around it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from msgspec import structs

from llmscope.api.persister import Conn, store_telemetry, store_violations
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.availability import AvailabilityConfig
from llmscope.spc_engine.engine import Engine


def failed(event: TelemetryEvent, error: str = "no answer in 30 s") -> TelemetryEvent:
    """``event`` as a probe that timed out: no latency, its error instead."""
    return structs.replace(
        event,
        status="timeout",
        error=error,
        latency_ms=None,
        ttft_ms=None,
        tokens_per_s=None,
        eval_count=None,
    )


async def engine_violations(
    events: Sequence[TelemetryEvent], *, baseline_n: int = 40
) -> list[ViolationEvent]:
    """What the engine publishes for ``events``, in order; its availability baseline is the first
    ``baseline_n`` probes (the service's default is 200)."""
    engine = Engine(availability=AvailabilityConfig(baseline_n=baseline_n))
    out: list[ViolationEvent] = []
    for event in events:
        out += await engine.on_telemetry(event)
    return out


async def availability_violation(
    events: Sequence[TelemetryEvent], failing: Iterable[int], vid: str, *, baseline_n: int = 40
) -> tuple[list[TelemetryEvent], ViolationEvent]:
    """``events`` with those at the ``failing`` indexes failed, and the engine's first
    AVAILABILITY violation of them, under the id ``vid`` (a test's page to open)."""
    down = set(failing)
    probes = [failed(e) if i in down else e for i, e in enumerate(events)]
    found = [
        v
        for v in await engine_violations(probes, baseline_n=baseline_n)
        if v.rule == "AVAILABILITY" and v.state == "open"
    ]
    assert found, "the engine signalled no AVAILABILITY violation for these probes"
    return probes, structs.replace(found[0], id=vid, episode_id=vid)


async def error_rate_violation(
    events: Sequence[TelemetryEvent], failing: Iterable[int], vid: str, *, baseline_n: int = 40
) -> tuple[list[TelemetryEvent], ViolationEvent]:
    """As :func:`availability_violation`, for the engine's first ERROR_RATE violation: too many
    failures scattered in its window (never a run long enough for AVAILABILITY)."""
    down = set(failing)
    probes = [failed(e) if i in down else e for i, e in enumerate(events)]
    found = [v for v in await engine_violations(probes, baseline_n=baseline_n) if v.state == "open"]
    assert [v.rule for v in found][:1] == ["ERROR_RATE"], [v.rule for v in found]
    return probes, structs.replace(found[0], id=vid, episode_id=vid)


async def store_seen(conn: Conn, probes: Sequence[TelemetryEvent], *violations: ViolationEvent) -> None:
    """The probes the engine saw and its violations, stored as the persister stores them."""
    await store_telemetry(conn, list(probes))
    await store_violations(conn, list(violations))
