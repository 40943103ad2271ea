"""A partition's traffic (pure): minutes -> charts -> violations, and a restart from a snapshot
taken mid-stream publishes exactly what an uninterrupted run does (ids included)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from llmscope.proto.charts import ChartRecord, chart_key, decode_record, is_traffic_chart
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.traffic import (
    ERROR_RATE,
    LPT_P50,
    LPT_P90,
    TTFT_P50,
    TrafficPartition,
    default_configs,
    traffic_key,
)

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


def records_of(tp: TrafficPartition) -> dict[str, ChartRecord]:
    return {key: decode_record(value) for key, value in tp.take_records(T0)}


def test_each_traffic_chart_has_a_record_readers_decode_with_its_minutes_and_limits() -> None:
    tp = TrafficPartition(CONFIGS.__getitem__)
    run(tp, stream(30, slow_from=20))
    records = records_of(tp)
    shop = {k: r for k, r in records.items() if r.meta.target == "shop"}
    assert {r.meta.metric for r in shop.values()} == {ERROR_RATE, LPT_P50, LPT_P90, TTFT_P50}
    # 12 requests a minute: the p90 needs 50, so no minute is a point of it.
    p90 = shop[chart_key("openai", "gpt-4o", "shop", "traffic:chat", LPT_P90)]
    assert p90.traffic is not None
    assert p90.view is not None
    assert (p90.view.phase, p90.traffic.points, p90.traffic.skipped, p90.traffic.recent) == (
        "collecting",
        0,
        29,
        (),
    )
    assert all(is_traffic_chart(k) and r.key == k for k, r in records.items())
    lpt = shop[chart_key("openai", "gpt-4o", "shop", "traffic:chat", LPT_P50)]
    assert lpt.view is not None
    assert lpt.traffic is not None
    assert (lpt.view.phase, lpt.view.progress, lpt.view.baseline_n) == ("armed", 8, 8)
    assert lpt.view.limits is not None
    assert lpt.view.baseline is not None
    assert lpt.view.baseline.created_by == "engine"
    assert lpt.view.open_episodes == ("TRAFFIC",)  # still 3x slower
    assert (lpt.traffic.service_name, lpt.traffic.operation, lpt.traffic.kind) == ("shop", "chat", "quantile")
    # Every closed minute but the last (still open) is a point; baseline minutes have no limit.
    recent = lpt.traffic.recent
    assert len(recent) == lpt.traffic.points == 29
    assert all(p.ucl is None for p in recent[:8])
    assert all(p.ucl is not None for p in recent[8:])
    assert 15 < recent[0].value < 25  # ms per token, not its log
    assert all(p.value > p.ucl for p in recent[20:] if p.ucl is not None)
    assert all(p.value < p.ucl for p in recent[8:20] if p.ucl is not None)
    assert lpt.view.limits.center < lpt.view.limits.ucl < recent[-1].value
    # Nothing changed since: nothing to write.
    assert tp.take_records(T0) == []


def test_a_rebaseline_clears_the_open_episode_and_collects_again() -> None:
    tp = TrafficPartition(CONFIGS.__getitem__)
    events = stream(40, slow_from=20)
    run(tp, events[: 24 * 30])
    key = chart_key("openai", "gpt-4o", "shop", "traffic:chat", LPT_P50)
    assert tp.rebaseline(chart_key("openai", "gpt-4o", "nobody", "traffic:chat", LPT_P50), "a", "b") is None
    cleared_events = tp.rebaseline(key, "ops@example.com", "new model version")
    assert cleared_events is not None
    (cleared,) = cleared_events
    assert (cleared.state, cleared.chart_key, cleared.rule) == ("cleared", key, "TRAFFIC")
    assert "ops@example.com" in cleared.detail
    record = records_of(tp)[key]
    assert record.view is not None
    assert record.traffic is not None
    assert (record.view.phase, record.view.progress, record.view.open_episodes) == ("collecting", 0, ())
    # The new baseline is the slow traffic: once it is collected, nothing pages.
    pages = [v for v in (run_violations(tp, events[24 * 30 :], 24 * 30 + 1)) if v.state == "open"]
    assert pages == []
    record = records_of(tp)[key]
    assert record.view is not None
    assert record.view.baseline is not None
    assert (record.view.phase, record.view.baseline.number) == ("armed", 1)
    assert (record.view.baseline.created_by, record.view.baseline.reason) == (
        "ops@example.com",
        "new model version",
    )
    # The subgroup's state (with the new baseline's who and why) goes to the next snapshot.
    restored = TrafficPartition.load_record(dict(tp.take_dirty(0))[traffic_key(0, "openai|gpt-4o|shop|chat")])
    assert restored.charts[key].baseline_number == 1


def run_violations(
    tp: TrafficPartition, events: list[tuple[TelemetryEvent, datetime]], first_seq: int
) -> list[ViolationEvent]:
    out = []
    for seq, (ev, stored) in enumerate(events, start=first_seq):
        out += tp.on_request(ev, stored, seq)[1]
    return out


def test_seeded_minutes_are_not_repeated_by_a_replay() -> None:
    events = stream(20, slow_from=99)
    tp = TrafficPartition(CONFIGS.__getitem__)
    run(tp, events[:300])
    kv = dict(tp.take_dirty(0))
    records = records_of(tp)
    run(tp, events[300:400], first_seq=301)
    records.update(records_of(tp))  # written, then a crash before the checkpoint at 300

    head = TrafficPartition.load_head(kv.pop(traffic_key(0)))
    restored = TrafficPartition(
        CONFIGS.__getitem__, head=head, records=[TrafficPartition.load_record(v) for v in kv.values()]
    )
    for key, record in records.items():
        assert record.traffic is not None
        restored.seed(key, record.traffic.recent)
    run(restored, events[300:], first_seq=301)
    straight = TrafficPartition(CONFIGS.__getitem__)
    run(straight, events)
    assert records_of(restored) == records_of(straight) | {}
