"""A partition's traffic (pure): minutes -> charts -> violations, and a restart from a snapshot
taken mid-stream publishes exactly what an uninterrupted run does (ids included)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.traffic import LPT_P50, TrafficPartition, default_configs, traffic_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONFIGS = default_configs(min_requests=5, baseline_minutes=8)


def stream(minutes: int, slow_from: int, seed: int = 3) -> list[tuple[TelemetryEvent, datetime]]:
    """Requests of two services, ~12 a minute each, stored 1-3 s after they start; one service
    gets 3x slower per token from ``slow_from``; now and then a probe (moves the clock only)."""
    rng = random.Random(seed)
    out = []
    for m in range(minutes):
        for i in range(24):
            at = T0 + timedelta(minutes=m, seconds=i * 2.5)
            service = ("shop", "search")[i % 2]
            tokens = rng.randint(5, 300)
            per_token = (
                20.0 * rng.lognormvariate(0, 0.1) * (3.0 if service == "shop" and m >= slow_from else 1)
            )
            ok = rng.random() > 0.02
            ev = TelemetryEvent(
                id=f"otlp-{m}-{i}",
                ts=at,
                source="traffic",
                provider="openai",
                model="gpt-4o",
                target="api.openai.com",
                service_name=service,
                prompt_id="traffic:chat",
                prompt_hash="",
                status="ok" if ok else "http_5xx",
                latency_ms=tokens * per_token if ok else 30.0,
                eval_count=tokens if ok else None,
                ttft_ms=rng.uniform(50, 80) if ok else None,
            )
            out.append((ev, at + timedelta(seconds=rng.uniform(1, 3))))
    return out


def run(tp: TrafficPartition, events: list[tuple[TelemetryEvent, datetime]], first_seq: int = 1) -> list[str]:
    ids = []
    for seq, (ev, stored) in enumerate(events, start=first_seq):
        minutes, violations = tp.on_request(ev, stored, seq)
        ids += [m.id for m in minutes] + [v.id for v in violations]
    return ids


def test_a_slowdown_of_one_service_pages_once_on_its_own_chart() -> None:
    tp = TrafficPartition(CONFIGS.__getitem__)
    pages = []
    for seq, (ev, stored) in enumerate(stream(30, slow_from=20), start=1):
        _, violations = tp.on_request(ev, stored, seq)
        pages += [v for v in violations if v.state == "open"]
    (page,) = pages
    assert (page.target, page.metric, page.prompt_id) == ("shop", LPT_P50, "traffic:chat")
    assert page.ts >= T0 + timedelta(minutes=20)
    assert page.value > page.limits.ucl > page.limits.center


def test_a_restart_from_a_mid_stream_snapshot_repeats_and_loses_nothing() -> None:
    events = stream(30, slow_from=20)
    straight = run(TrafficPartition(CONFIGS.__getitem__), events)
    assert len(straight) > 50

    tp = TrafficPartition(CONFIGS.__getitem__)
    kv: dict[str, bytes] = {}
    got = run(tp, events[:400])
    for key, value in tp.take_dirty(0):
        kv[key] = value
    checkpoint = 400
    got += run(tp, events[400:500], first_seq=401)  # published, then a crash before the next snapshot

    head = TrafficPartition.load_head(kv.pop(traffic_key(0)))
    records = [TrafficPartition.load_record(v) for v in kv.values()]
    assert len(records) == 2  # one value per subgroup
    restored = TrafficPartition(CONFIGS.__getitem__, head=head, records=records)
    # The consumer starts after the checkpoint; a redelivery of older sequences changes nothing.
    assert run(restored, events[390:400], first_seq=391) == []
    got += run(restored, events[checkpoint:], first_seq=checkpoint + 1)
    assert sorted(set(got)) == sorted(straight)
    assert set(got[: len(straight)]) <= set(straight)
