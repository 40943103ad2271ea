"""Telemetry streams for engine and service tests."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from llmscope.proto.telemetry import TelemetryEvent

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def telemetry_stream(
    n: int, models: tuple[str, ...] = ("m1",), seed: int = 0, shift_at: int | None = None
) -> list[TelemetryEvent]:
    """Rotating prompts over ``models``; a 2x latency shift from ``shift_at``, a few failures."""
    rng = random.Random(seed)
    levels = {"simple": 300.0, "medium": 1200.0}
    out = []
    for i in range(n):
        model = models[i % len(models)]
        prompt = ("simple", "medium")[(i // len(models)) % 2]
        failed = rng.random() < 0.02
        factor = 2.0 if shift_at is not None and i >= shift_at else 1.0
        latency = levels[prompt] * factor * math.exp(0.25 * rng.gauss(0, 1))
        tokens_per_s = None if failed else 50.0 / factor * math.exp(0.1 * rng.gauss(0, 1))
        out.append(probe(i, f"ev{seed}-{i}", model, prompt, None if failed else latency, tokens_per_s))
    return out


def probe(
    i: int, event_id: str, model: str, prompt: str, latency: float | None, tokens_per_s: float | None
) -> TelemetryEvent:
    """Probe ``i`` (one a second from T0) of a streaming target per model; no latency: a timeout."""
    return TelemetryEvent(
        id=event_id,
        ts=T0 + timedelta(seconds=i),
        provider="ollama",
        model=model,
        target=f"t-{model}",
        prompt_id=prompt,
        prompt_hash="h",
        streaming=True,
        status="timeout" if latency is None else "ok",
        latency_ms=latency,
        ttft_ms=None if latency is None else latency * 0.2,
        tokens_per_s=tokens_per_s,
    )
