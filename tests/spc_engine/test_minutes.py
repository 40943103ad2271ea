"""The per-minute traffic aggregator (pure): minutes close by the stream's clock after a grace
period, late requests are counted, replays are skipped, the state survives dump/load."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.minutes import QUANTILES, MinuteAggregator, minute_id

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request(
    i: int,
    at: datetime,
    *,
    ok: bool = True,
    latency: float = 1000.0,
    tokens: int = 50,
    ttft: float | None = 100.0,
    service: str = "shop",
    model: str = "gpt-4o",
) -> TelemetryEvent:
    return TelemetryEvent(
        id=f"otlp-{i}",
        ts=at,
        source="traffic",
        provider="openai",
        model=model,
        target="api.openai.com",
        service_name=service,
        prompt_id="traffic:chat",
        prompt_hash="",
        status="ok" if ok else "http_5xx",
        error_type=None if ok else "500",
        latency_ms=latency if ok else 20.0,
        ttft_ms=ttft if ok else None,
        eval_count=tokens if ok else None,
        prompt_eval_count=200 if ok else None,
    )


def test_a_minute_closes_once_the_stream_is_grace_past_its_end() -> None:
    agg = MinuteAggregator(grace_s=10.0)
    rng = random.Random(1)
    lat = [rng.lognormvariate(7, 0.4) for _ in range(40)]
    toks = [rng.randint(1, 400) for _ in range(40)]
    for i in range(40):
        at = T0 + timedelta(seconds=i * 1.5)
        assert agg.add(request(i, at, ok=i % 10 != 3, latency=lat[i], tokens=toks[i]), at, seq=i + 1) == []
    # The next minute's requests do not close it before grace has passed...
    assert agg.observe(T0 + timedelta(seconds=69.9), seq=41) == []
    # ...the stream's clock does, probes included.
    (ev,) = agg.observe(T0 + timedelta(seconds=70), seq=42)
    assert ev.ts == T0
    assert ev.window_end == T0 + timedelta(minutes=1)
    assert (ev.n, ev.errors, ev.late) == (40, 4, 0)
    assert ev.id == minute_id("openai", "gpt-4o", "shop", "chat", int(T0.timestamp()) // 60)
    ok = [i for i in range(40) if i % 10 != 3]
    oracle = np.quantile(np.array([lat[i] / toks[i] for i in ok], dtype=np.float32), QUANTILES)
    q = ev.latency_per_token_ms
    assert q is not None
    assert q.n == 36
    assert [q.p25, q.p50, q.p75, q.p90, q.p95, q.p99] == pytest.approx(list(oracle), rel=1e-5)
    assert ev.ttft_ms is not None
    assert ev.ttft_ms.p50 == pytest.approx(100.0)
    assert ev.input_tokens_mean == pytest.approx(200.0)


def test_subgroups_are_apart_and_close_in_order() -> None:
    agg = MinuteAggregator(grace_s=0.0)
    closed = agg.add(request(1, T0, service="b"), T0)
    closed += agg.add(request(2, T0, service="a"), T0)
    # Stored as the minute ends (grace 0): it closes the first minute before it is counted.
    closed += agg.add(request(3, T0 + timedelta(minutes=1), service="a"), T0 + timedelta(minutes=1))
    assert len(closed) == 2
    closed += agg.advance(T0 + timedelta(minutes=2))
    assert [(e.ts, e.service_name) for e in closed] == [
        (T0, "a"),
        (T0, "b"),
        (T0 + timedelta(minutes=1), "a"),
    ]


def test_late_requests_are_counted_and_reported_in_the_next_minute() -> None:
    agg = MinuteAggregator(grace_s=5.0)
    agg.add(request(1, T0), T0)
    (first,) = agg.advance(T0 + timedelta(seconds=66))
    assert first.late == 0
    agg.add(request(2, T0 + timedelta(seconds=30)), T0 + timedelta(seconds=67))  # its minute is gone
    agg.add(request(3, T0 + timedelta(seconds=61)), T0 + timedelta(seconds=68))
    assert agg.state.late_total == 1
    (second,) = agg.advance(T0 + timedelta(seconds=130))
    assert (second.n, second.late) == (1, 1)
    assert agg.state.late_total == 1


def test_replayed_sequences_are_skipped_and_the_state_survives_a_dump() -> None:
    agg = MinuteAggregator(grace_s=10.0)
    for i in range(5):
        agg.add(request(i, T0 + timedelta(seconds=i)), T0 + timedelta(seconds=i), seq=i + 1)
    restored = MinuteAggregator(grace_s=10.0, state=MinuteAggregator.load(agg.dump()))
    assert restored.state == agg.state
    for i in range(5):  # a replay from an older checkpoint: already counted
        restored.add(request(i, T0 + timedelta(seconds=i)), T0 + timedelta(seconds=i), seq=i + 1)
    (a,) = agg.advance(T0 + timedelta(minutes=2))
    (b,) = restored.advance(T0 + timedelta(minutes=2))
    assert a == b
    assert a.n == 5


def test_a_busy_minute_keeps_exact_counts_and_says_its_quantiles_are_sampled() -> None:
    agg = MinuteAggregator(grace_s=0.0, max_values=10)
    for i in range(25):
        agg.add(request(i, T0, latency=100.0 + i), T0)
    (ev,) = agg.advance(T0 + timedelta(minutes=1))
    assert ev.n == 25
    assert ev.sampled
    assert ev.latency_ms is not None
    assert ev.latency_ms.n == 10
