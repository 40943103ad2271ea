"""The engine's private chart state: every record reads back exactly as the charts it was made of."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.chart import PointRef
from llmscope.spc_engine.engine import AvailabilitySnapshot, ChartSnapshot, Engine
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import (
    ChartStore,
    Parts,
    Saved,
    decode_availability,
    decode_series,
    encode_availability,
    encode_series,
    pack_ids,
    pack_ts,
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


def assert_same(members: list[tuple[str, ChartSnapshot, int, int]], parts: Parts | None = None) -> bytes:
    """Encodes the series' record, reads it back and checks it; returns the record."""
    parts = parts if parts is not None else Parts()
    data = encode_series(members, parts)
    back = decode_series("ollama", "m1", "t-m1", members[0][1].meta.prompt_id, data, parts.get)
    assert_charts(members, back)
    return data


def assert_charts(members: list[tuple[str, ChartSnapshot, int, int]], back: dict[str, Saved]) -> None:
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
    data = assert_same(members)
    # The ids and times of the points the charts share are stored once.
    old = sum(len(msgspec.json.encode(snap)) for _, snap, _, _ in members)
    assert len(data) < old / 2


async def test_collecting_charts_and_points_out_of_order_read_back_exactly() -> None:
    engine = await charted(telemetry_stream(30))  # collecting: no baseline yet
    members = series_of(engine, "simple")
    assert members[0][1].state.baseline is None
    assert members[0][1].state.collected
    assert_same(members)
    # Indexes that are not consecutive, a point without a time, an id used twice at two times.
    snap = members[0][1]
    t = datetime(2025, 1, 1, tzinfo=UTC)
    snap.state.recent = [
        PointRef(3, "a", 1.0, t),
        PointRef(7, "b", 2.0, None),
        PointRef(8, "a", 3.0, t + timedelta(1)),
    ]
    assert_same(members)
    snap.state.recent = []
    assert_same(members)


async def test_an_availability_record_reads_back_exactly() -> None:
    events = telemetry_stream(600, seed=2)
    engine = await charted([msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in events])
    key = chart_key("ollama", "m1", "t-m1", "*", "availability")
    snap = engine.snapshot(key)
    assert isinstance(snap, AvailabilitySnapshot)
    assert snap.state.threshold is not None
    assert snap.state.recent_ids
    parts = Parts()
    data = encode_availability(snap, 5, 9, parts)
    assert len(parts.new) == 1, "its configuration is a part of its own"
    back = decode_availability(key, data, parts.get)
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


async def test_configurations_and_baselines_are_parts_stored_once_and_named_by_digest() -> None:
    events = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(300, seed=4)]
    engine = await charted(events)
    members = series_of(engine, "simple")
    assert all(snap.state.baseline is not None for _, snap, _, _ in members)
    parts = Parts()
    data = assert_same(members, parts)
    # Three metrics: three configurations and three baselines, each its own part.
    assert len(parts.new) == 6
    written = parts.take_new()
    parts.stored(k for k, _ in written)
    assert all(k.startswith("_part.") for k, _ in written)
    # The record names them: a fraction of what they weigh.
    assert len(data) < 6500 < len(data) + sum(len(v) for _, v in written)
    # Written once: the next record (a point later) names the same parts and queues none.
    more = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(301, seed=4)[300:]]
    for ev in more:
        await engine.on_telemetry(ev, 301)
    members = series_of(engine, "simple")
    data2 = encode_series(members, parts)
    assert not parts.new
    back = decode_series("ollama", "m1", "t-m1", "simple", data2, dict(written_parts(written)).__getitem__)
    assert_charts(members, back)
    # A re-baseline makes a new baseline, once armed: one new part (the rest stay stored).
    engine.rebaseline(members[0][1].key, "ops", "test", datetime.now(UTC))
    later = telemetry_stream(700, seed=4)[300:]
    for seq, ev in enumerate(later, start=302):
        await engine.on_telemetry(msgspec.structs.replace(ev, id=uuid.uuid4().hex), seq)
    members = series_of(engine, "simple")
    assert members[0][1].state.baseline is not None
    assert members[0][1].state.baseline.number == 1
    data3 = encode_series(members, parts)
    assert len(parts.new) == 1
    known = {**dict(written_parts(written)), **parts.new}
    assert_charts(members, decode_series("ollama", "m1", "t-m1", "simple", data3, known.__getitem__))


def written_parts(written: list[tuple[str, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes.fromhex(k.removeprefix("_part.")), v) for k, v in written]


class _MetricV1(msgspec.Struct, array_like=True):
    """A series' chart as the first version of the record had it: configuration and baseline in it."""

    metric: str
    seq: int
    settings_seq: int
    gen: int
    base: int
    config: object
    state: object
    index: list[int]
    values: list[float]
    refs: list[int]


async def test_a_first_version_record_with_everything_in_it_reads_back_exactly() -> None:
    events = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(300, seed=4)]
    engine = await charted(events)
    members = series_of(engine, "simple")
    ids = [p.id for p in members[0][1].state.recent]
    charts = []
    for metric, snap, gen, base in members:
        recent = snap.state.recent
        assert [p.id for p in recent] == ids
        charts.append(
            _MetricV1(
                metric,
                snap.seq,
                snap.settings_seq,
                gen,
                base,
                msgspec.to_builtins(snap.config),
                msgspec.structs.replace(snap.state, recent=[]),
                [recent[0].index] if recent else [],
                [p.value for p in recent],
                [],
            )
        )
    ts = [p.ts for p in members[0][1].state.recent]
    data = msgspec.msgpack.encode([1, pack_ids(ids), pack_ts(ts), charts])
    back = decode_series("ollama", "m1", "t-m1", "simple", data, Parts().get)  # names no part
    assert_charts(members, back)


class _RecordingKv:
    """Enough of a KeyValue for ``put_many``: each publish recorded in order, acked at once."""

    def __init__(self, log: list[str]) -> None:
        self._pre = ""
        self._js = self
        self.log = log

    async def publish_async(self, subject: str, payload: bytes) -> asyncio.Future[None]:
        self.log.append(subject)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def put(self, key: str, value: bytes) -> int:
        self.log.append(key)
        return 1


async def test_parts_are_stored_before_the_records_naming_them_and_only_once() -> None:
    events = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(300, seed=4)]
    engine = await charted(events)
    state: list[str] = []
    store = ChartStore(_RecordingKv([]), _RecordingKv(state))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    await store.write(engine, list(engine.charts), now)
    parts = [i for i, key in enumerate(state) if key.startswith("_part.")]
    records = [i for i, key in enumerate(state) if not key.startswith("_part.")]
    # Two prompts' metric charts share three configurations; six baselines, one availability
    # configuration: each part once, all of them before the first record.
    assert len(parts) == 3 + 6 + 1
    assert len(records) == 2 + 1
    assert max(parts) < min(records)
    state.clear()
    for ev in telemetry_stream(310, seed=4)[300:]:
        await engine.on_telemetry(msgspec.structs.replace(ev, id=uuid.uuid4().hex), 400)
    await store.write(engine, list(engine.charts), now)
    assert state
    assert not [key for key in state if key.startswith("_part.")]


async def test_a_first_version_availability_record_reads_back_exactly() -> None:
    events = telemetry_stream(600, seed=2)
    engine = await charted([msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in events])
    key = chart_key("ollama", "m1", "t-m1", "*", "availability")
    snap = engine.snapshot(key)
    assert isinstance(snap, AvailabilitySnapshot)
    rest = msgspec.structs.replace(snap.state, recent_ids=[])
    config = msgspec.to_builtins(snap.config)
    data = msgspec.msgpack.encode([1, snap.seq, 5, 9, config, rest, pack_ids(snap.state.recent_ids)])
    back = decode_availability(key, data, Parts().get)  # names no part
    assert isinstance(back.snapshot, AvailabilitySnapshot)
    assert (back.gen, back.base, back.snapshot.config, back.snapshot.state) == (5, 9, snap.config, snap.state)


class _PayloadKv(_RecordingKv):
    """A ``_RecordingKv`` that keeps each record's bytes too."""

    def __init__(self) -> None:
        super().__init__([])
        self.values: dict[str, bytes] = {}

    async def publish_async(self, subject: str, payload: bytes) -> asyncio.Future[None]:
        self.values[subject] = payload
        return await super().publish_async(subject, payload)


async def test_a_public_only_write_builds_no_snapshot_and_writes_what_a_full_write_would() -> None:
    """The write each second (``state=False``) reads the views alone, not a snapshot of every
    chart's state (most of the engine's work each second at a trickle), and writes the same
    records as a full write of the same charts."""
    events = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(300, seed=4)]
    more = [msgspec.structs.replace(ev, id=uuid.uuid4().hex) for ev in telemetry_stream(330, seed=4)[300:]]
    now = datetime.now(UTC)
    written: list[dict[str, bytes]] = []
    for state in (False, True):
        engine = await charted(events)
        charts, saved = _PayloadKv(), _PayloadKv()
        store = ChartStore(charts, saved)  # type: ignore[arg-type]
        await store.write(engine, engine.take_dirty(), now)
        charts.values.clear()
        saved.log.clear()
        for seq, ev in enumerate(more, start=301):
            await engine.on_telemetry(ev, seq)
        if not state:
            full = engine.snapshot

            def no_snapshot(key: str, updated_at: datetime | None = None) -> object:
                raise AssertionError(f"snapshot of {key} built for a public-only write")

            engine.snapshot = no_snapshot  # type: ignore[method-assign,assignment]
        await store.write(engine, engine.take_dirty(), now, state=state)
        if not state:
            assert not saved.log  # no state written
            engine.snapshot = full  # type: ignore[method-assign]
        written.append(dict(charts.values))
    assert written[0]  # views changed: records written
    assert written[0] == written[1]
