"""Kept for the dashboard tests that import it from here: the helper lives in
``tests/engine_events.py``, shared with the alerter's tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from msgspec import structs

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from tests.engine_events import availability_violation, engine_violations, failed

__all__ = ["availability_violation", "engine_violations", "error_rate_violation", "failed"]


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
