"""What the traffic end-to-end tests share: an engine whose "minute" is one second, and a burst
of chat spans, one window per second, whose latency per token rises by a factor from a window on."""

from __future__ import annotations

import math
import random

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from llmscope.bus.settings import BusSettings
from llmscope.spc_engine.settings import SpcSettings
from tests.api.otlp_payloads import chat, span


def fast_traffic_settings(nats_url: str) -> SpcSettings:
    """One-second traffic windows, five requests a point, six-window baselines."""
    return SpcSettings(
        bus=BusSettings(nats_url=nats_url),
        snapshot_interval_s=0.05,
        traffic_window_s=1,
        traffic_grace_s=0.5,
        traffic_min_requests=5,
        traffic_baseline_minutes=6,
    )


def slowing_spans(
    seed: int, first: int, windows: int, per_window: int, slow_from: int, factor: float
) -> list[Span]:
    """``per_window`` chat spans in each one-second window from unix second ``first``; 20-200
    output tokens at about 10 ms each, ``factor`` times slower from window ``slow_from`` on."""
    rng = random.Random(seed)
    out = []
    for w in range(windows):
        for j in range(per_window):
            n = w * per_window + j
            tokens = rng.randint(20, 200)
            per_token = 10.0 * math.exp(rng.gauss(0, 0.1)) * (factor if w >= slow_from else 1.0)
            attrs = chat(n, **{"gen_ai.usage.output_tokens": tokens})
            start_ns = (first + w) * 1_000_000_000 + j * 100_000_000
            out.append(span(n, attrs, start_ns=start_ns, duration_ms=tokens * per_token))
    return out
