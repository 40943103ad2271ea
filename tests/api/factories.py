"""Building wire events for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from llmscope.proto.base import new_id
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def telemetry(i: int = 0, **overrides: Any) -> TelemetryEvent:
    fields: dict[str, Any] = {
        "id": f"t{i:06d}",
        "ts": T0 + timedelta(seconds=2 * i),
        "provider": "ollama",
        "model": "llama3.1:8b",
        "target": "local",
        "host": "gpu-1",
        "prompt_id": "simple-1",
        "prompt_hash": "ab" * 32,
        "latency_ms": 100.0 + (i % 7),
        "ttft_ms": 20.0 + (i % 3),
        "tokens_per_s": 50.0,
        "eval_count": 32,
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
    }
    fields.update(overrides)
    return TelemetryEvent(**fields)


def limits(center: float = 100.0, sigma: float = 2.0) -> ChartLimits:
    return ChartLimits(
        center=center,
        sigma=sigma,
        ucl=center + 3 * sigma,
        lcl=center - 3 * sigma,
        zone_a_upper=center + 2 * sigma,
        zone_a_lower=center - 2 * sigma,
        zone_b_upper=center + sigma,
        zone_b_lower=center - sigma,
    )


def violation(point: TelemetryEvent, **overrides: Any) -> ViolationEvent:
    vid = overrides.pop("id", None) or new_id()
    fields: dict[str, Any] = {
        "id": vid,
        "episode_id": vid,
        "ts": point.ts,
        "provider": point.provider,
        "model": point.model,
        "target": point.target,
        "host": point.host,
        "prompt_id": point.prompt_id,
        "metric": "latency_ms",
        "chart_key": f"{point.provider}/{point.model}/{point.prompt_id}/latency_ms",
        "rule": "R1",
        "rule_name": "1 point beyond 3 sigma",
        "severity": "critical",
        "value": point.latency_ms or 0.0,
        "deviation_sigma": 4.2,
        "limits": limits(),
        "baseline": BaselineRef(id="b1", n=100),
        "point_ids": (point.id,),
        "point_values": (point.latency_ms or 0.0,),
        "point_ts": (point.ts,),
    }
    fields.update(overrides)
    return ViolationEvent(**fields)


def cleared(open_event: ViolationEvent, at: datetime) -> ViolationEvent:
    return ViolationEvent(
        **{
            **{f: getattr(open_event, f) for f in open_event.__struct_fields__},
            "id": new_id(),
            "state": "cleared",
            "episode_id": open_event.id,
            "ts": at,
        }
    )
