"""The engine's private chart state: every record reads back exactly as the charts it was made of."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.chart import PointRef
from llmscope.spc_engine.engine import AvailabilitySnapshot, ChartSnapshot, Engine
from llmscope.spc_engine.service import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import (
    decode_availability,
    decode_series,
    encode_availability,
    encode_series,
    pack_ids,
    unpack_ids,
)

from .helpers import telemetry_stream

PLUS_2 = timezone(timedelta(hours=2))


async def charted(events: list[TelemetryEvent]) -> Engine:
    engine = Engine(config_for=lambda metric: config_for(SpcSettings(baseline_n=100), metric))
    for seq, ev in enumerate(events, start=1):
        await engine.on_telemetry(ev, seq)
    return engine


def series_of(engine: Engine, prompt: str) -> list[tuple[str, ChartSnapshot, int, int]]:
    out = []
    for metric in ("latency_ms", "ttft_ms", "tokens_per_s"):
        snap = engine.snapshot(chart_key("ollama", "m1", "t-m1", prompt, metric))
        assert isinstance(snap, ChartSnapshot)
        out.append((metric, snap, 3, 0))
    return out


def assert_same(members: list[tuple[str, ChartSnapshot, int, int]], data: bytes) -> None:
    back = decode_series("ollama", "m1", "t-m1", members[0][1].meta.prompt_id, data)
    assert sorted(back) == sorted(m for m, *_ in members)
    for metric, snap, gen, base in members:
        got = back[metric]
        assert (got.gen, got.base) == (gen, base)
        assert isinstance(got.snapshot, ChartSnapshot)
        assert got.snapshot.seq == snap.seq
        assert got.snapshot.settings_seq == snap.settings_seq
        assert got.snapshot.config == snap.config
        assert got.snapshot.state == snap.state
        # Equal is not enough for times: a replayed violation must read as the uninterrupted
        # run's, offset included, so the JSON of the state must be the same bytes.
        assert msgspec.json.encode(got.snapshot.state) == msgspec.json.encode(snap.state)


@pytest.mark.parametrize(
    ("ids", "tz"),
    [("uuid", UTC), ("plain", UTC), ("uuid", PLUS_2)],
    ids=["uuid-utc", "other-ids", "offset-times"],
)
async def test_a_series_record_reads_back_exactly(ids: str, tz: timezone) -> None:
    events = telemetry_stream(1200, shift_at=900, seed=4)
    events = [
        msgspec.structs.replace(
            ev,
            id=uuid.uuid4().hex if ids == "uuid" else ev.id,
            ts=ev.ts.astimezone(tz),
            # Now and then no TTFT: the series' charts hold different points.
            ttft_ms=None if i % 7 == 0 else ev.ttft_ms,
        )
        for i, ev in enumerate(events)
    ]
    engine = await charted(events)
    members = series_of(engine, "simple")
    states = [snap.state for _, snap, _, _ in members]
    assert all(s.baseline is not None for s in states)
    assert any(s.episodes for s in states), "open episodes are part of the state"
    assert [p.id for p in states[0].recent] != [p.id for p in states[1].recent]
    data = encode_series(members)
    assert_same(members, data)
    # The ids and times of the points the charts share are stored once.
    old = sum(len(msgspec.json.encode(snap)) for _, snap, _, _ in members)
    assert len(data) < old / 2


async def test_collecting_charts_and_points_out_of_order_read_back_exactly() -> None:
    engine = await charted(telemetry_stream(30))  # collecting: no baseline yet
    members = series_of(engine, "simple")
    assert members[0][1].state.baseline is None
    assert members[0][1].state.collected
    assert_same(members, encode_series(members))
    # Indexes that are not consecutive, a point without a time, an id used twice at two times.
    snap = members[0][1]
    t = datetime(2025, 1, 1, tzinfo=UTC)
    snap.state.recent = [
        PointRef(3, "a", 1.0, t),
        PointRef(7, "b", 2.0, None),
        PointRef(8, "a", 3.0, t + timedelta(1)),
    ]
    assert_same(members, encode_series(members))
    snap.state.recent = []
    assert_same(members, encode_series(members))


async def test_an_availability_record_reads_back_exactly() -> None:
    events = telemetry_stream(600, seed=2)
    engine = await charted([msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in events])
    key = chart_key("ollama", "m1", "t-m1", "*", "availability")
    snap = engine.snapshot(key)
    assert isinstance(snap, AvailabilitySnapshot)
    assert snap.state.threshold is not None
    assert snap.state.recent_ids
    back = decode_availability(key, encode_availability(snap, 5, 9))
    assert (back.gen, back.base) == (5, 9)
    assert isinstance(back.snapshot, AvailabilitySnapshot)
    assert (back.snapshot.seq, back.snapshot.config, back.snapshot.state) == (
        snap.seq,
        snap.config,
        snap.state,
    )


def test_ids_pack_to_16_bytes_only_when_they_read_back_the_same() -> None:
    hexes = [uuid.uuid4().hex for _ in range(3)]
    assert isinstance(pack_ids(hexes), bytes)
    assert unpack_ids(pack_ids(hexes)) == hexes
    for other in ([h.upper() for h in hexes], [*hexes, "x" * 32], [*hexes, "ev-1"], [str(uuid.uuid4())]):
        assert pack_ids(other) == other
        assert unpack_ids(pack_ids(other)) == other
    assert unpack_ids(pack_ids([])) == []
