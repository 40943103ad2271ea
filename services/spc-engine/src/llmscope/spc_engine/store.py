"""Where the engine keeps its charts: a public record readers watch, and private state.

Two KV buckets, written by the engine alone:

- the chart bucket (``llmscope_spc_charts``, the contract of :mod:`llmscope.proto.charts`): one
  JSON record per chart with what readers show (meta, and the view, availability view or traffic
  view), written only when that changed. ``seq`` is the last telemetry stream sequence the chart
  had applied when the record was written (the state its view renders), ``updated_at`` when it
  was written, and ``gen`` its generation: 1 for a chart's first record, +1 per write.
- the state bucket (``llmscope_spc_state``): everything exact recovery needs, in msgpack, written
  every ``LLMSCOPE_SPC_STATE_INTERVAL_S`` for each probe series that took a point: one record per probe series
  (provider, model, target, prompt: its metric charts together, key :func:`series_key`) and one
  per availability chart (its chart key). Each chart in it carries its own ``seq`` and the
  ``gen`` of the public record that shows it.

Consistency rule: a snapshot writes the state records first, then the public records, then the
partitions' checkpoints. So a chart's state record is never older than its partition's
checkpoint, and the state record alone decides where a chart resumes; the public record is a view
of it, re-rendered when it differs. It lags the state (``state.gen > public.gen``) after a crash
between the two writes, e.g. of a re-baseline; it runs ahead (``state.gen < public.gen``, or no
state at all) when ``LLMSCOPE_SPC_STATE_INTERVAL_S`` is longer than the snapshot interval: the
public records are then written every snapshot interval and the state, with the checkpoints, only
every state interval (and at once for a re-baseline, a hand-over and a stop), so the replay
from the checkpoint brings the chart back to what its record showed, exactly. A public
record with ``config`` and ``state`` in it was written by an engine before this split: its state
is used unless a state record names that very record (its KV revision, ``base``) as the one it
continued from; a state record naming another (an older run, before a downgrade wrote the
public record again) is stale and ignored. A chart continued from such a record keeps it, the
only copy of its past, until its state is written (no public-only write replaces it). A state
record older than a new-style public record
is used as it is, for the reason above (a state bucket that lost writes looks the same and
cannot be told apart: exact recovery needs the state bucket kept, as the chart bucket was).

The recent points of a series' metric charts (the same probes, mostly) share one table of
(id, ts), ids of 32 hex digits stored as 16 bytes, and times as msgpack timestamps when UTC (as
RFC 3339 otherwise, offset kept, so a replayed violation's times read exactly as the
uninterrupted run's).

What seldom changes is not in the records: a chart's configuration and its frozen baseline are
*parts* (:class:`Parts`), each stored once in the state bucket under the digest of its bytes
(``_part.<hex>``), before any record naming it, and never rewritten; a record names them by
digest (16 bytes). They were 3.5 KB of an armed series' 8.4 KB. Records of version 1 (the
configuration and baseline in them) are read as they are; an engine of version 1 cannot read
records of version 2 (no downgrade past this).

How often: at the default ``LLMSCOPE_SPC_STATE_INTERVAL_S`` (15 s) a series probed every 2 s
has its record written once per 7 or 8 probes instead of once per probe; a takeover replays up to
that much telemetry from the checkpoint (exactly: each chart skips what its state covers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from llmscope.bus.kv import put_many
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.charts import (
    AVAILABILITY,
    AvailabilityView,
    ChartMeta,
    ChartView,
    chart_key,
    parse_chart_key,
)
from llmscope.spc_engine.availability import AvailabilityConfig, AvailabilityState
from llmscope.spc_engine.chart import Baseline, ChartState, PointRef
from llmscope.spc_engine.config import CHARTED_METRICS, ChartConfig
from llmscope.spc_engine.engine import (
    AvailabilitySnapshot,
    ChartSnapshot,
    Engine,
    Snapshot,
    decode_snapshot,
)

log = get_logger("llmscope.spc_engine.store")

STATE_VERSION = 2
"""2: configurations and baselines are parts named by digest (1: in the record; still read)."""


def series_key(provider: str, model: str, target: str, prompt_id: str) -> str:
    """State-bucket key of a probe series' metric charts (four parts; a chart key has five)."""
    return subjects.kv_key(provider, model, target, prompt_id)


# -- the public record --------------------------------------------------------------------------


class PublicChart(msgspec.Struct, kw_only=True):
    """A metric chart's public record (what :class:`~llmscope.proto.charts.ChartRecord` reads)."""

    version: int = 1
    key: str
    meta: ChartMeta
    seq: int
    updated_at: datetime | None = None
    view: ChartView | None = None
    gen: int


class PublicAvailability(msgspec.Struct, kw_only=True):
    """An availability chart's public record."""

    version: int = 1
    key: str
    meta: ChartMeta
    seq: int
    updated_at: datetime | None = None
    availability: AvailabilityView | None = None
    gen: int


class _Stored(msgspec.Struct):
    """What the engine reads back of a public record (its parts as written, for comparing)."""

    gen: int = 0
    meta: msgspec.Raw = msgspec.Raw(b"")
    view: msgspec.Raw = msgspec.Raw(b"")
    availability: msgspec.Raw = msgspec.Raw(b"")
    state: msgspec.Raw = msgspec.Raw(b"")
    """Present only in records of engines before the split (the full snapshot)."""


# -- the private state --------------------------------------------------------------------------


class _MetricOut(msgspec.Struct, array_like=True):
    metric: str
    seq: int
    settings_seq: int
    gen: int
    base: int
    config: bytes
    """The digest of its configuration's part (a map, the configuration itself, in version 1)."""
    state: Any
    """The state but its recent points and baseline."""
    index: list[int]
    """The recent points' indexes: ``[first]`` when consecutive, else every one."""
    values: list[float]
    refs: list[int]
    """Each recent point's row in the series' table of (id, ts); empty: the table's rows in order."""
    baseline: bytes
    """The digest of its baseline's part (empty: none, or in ``state`` in version 1)."""


class _MetricIn(msgspec.Struct, array_like=True):
    metric: str
    seq: int
    settings_seq: int
    gen: int
    base: int
    config: ChartConfig | bytes
    state: ChartState
    index: list[int]
    values: list[float]
    refs: list[int]
    baseline: bytes = b""


class _SeriesOut(msgspec.Struct, array_like=True):
    version: int
    ids: bytes | list[str]
    ts: list[datetime | str | None]
    charts: list[_MetricOut]


class _SeriesIn(msgspec.Struct, array_like=True):
    version: int
    ids: Any
    ts: list[datetime | None]
    charts: list[_MetricIn]


class _AvailabilityOut(msgspec.Struct, array_like=True):
    version: int
    seq: int
    gen: int
    base: int
    config: bytes
    state: Any
    ids: bytes | list[str]


class _AvailabilityIn(msgspec.Struct, array_like=True):
    version: int
    seq: int
    gen: int
    base: int
    config: AvailabilityConfig | bytes
    state: AvailabilityState
    ids: Any


class Saved(msgspec.Struct, kw_only=True):
    """One chart's private state as read back: its full snapshot and its bookkeeping."""

    snapshot: Snapshot
    gen: int
    base: int = 0


_encode = msgspec.msgpack.encode
_series_decoder = msgspec.msgpack.Decoder(_SeriesIn)
_availability_decoder = msgspec.msgpack.Decoder(_AvailabilityIn)
_stored_decoder = msgspec.json.Decoder(_Stored)
_config_decoder = msgspec.msgpack.Decoder(ChartConfig)
_availability_config_decoder = msgspec.msgpack.Decoder(AvailabilityConfig)
_baseline_decoder = msgspec.msgpack.Decoder(Baseline)
_json = msgspec.json.encode


def pack_ids(ids: list[str]) -> bytes | list[str]:
    """16 bytes each when every id is 32 lower-case hex digits (UUID4s as probers write them)."""
    joined = "".join(ids)
    # map(len) in C: a generator over the ids was most of a record's encoding.
    if len(joined) == 32 * len(ids) and (not ids or min(map(len, ids)) == 32):
        try:
            raw = bytes.fromhex(joined)
        except ValueError:
            return ids
        if raw.hex() == joined:
            return raw
    return ids


def unpack_ids(packed: bytes | list[str]) -> list[str]:
    if isinstance(packed, bytes):
        text = packed.hex()
        return [text[i : i + 32] for i in range(0, len(text), 32)]
    return packed


def pack_ts(ts: list[datetime | None]) -> list[datetime | str | None]:
    """As they are when UTC (msgpack timestamps), else RFC 3339 with the offset each had: a
    msgpack timestamp comes back as UTC, and a replayed violation's times must read the same."""
    if all(t is None or t.tzinfo is UTC for t in ts):
        return ts  # type: ignore[return-value]
    return [t if t is None else t.isoformat() for t in ts]


class _Table:
    """The (id, ts) rows of a series' recent points: those of its first chart, then any other."""

    __slots__ = ("ids", "rows", "ts")

    def __init__(self) -> None:
        self.rows: dict[tuple[str, datetime | None], int] | None = None
        self.ids: list[str] = []
        self.ts: list[datetime | None] = []

    def refs(self, points: Sequence[PointRef]) -> list[int]:
        ids = [p.id for p in points]
        ts = [p.ts for p in points]
        if not self.ids and not self.rows:
            self.ids, self.ts = ids, ts
            return []
        if ids == self.ids and ts == self.ts:  # the usual case: the same probes
            return []
        rows = self.rows
        if rows is None:
            rows = self.rows = {}
            for row, pair in enumerate(zip(self.ids, self.ts, strict=True)):
                rows.setdefault(pair, row)
            self.ids, self.ts = list(self.ids), list(self.ts)
        out: list[int] = []
        for pair in zip(ids, ts, strict=True):
            found = rows.get(pair)
            if found is None:
                found = rows[pair] = len(self.ids)
                self.ids.append(pair[0])
                self.ts.append(pair[1])
            out.append(found)
        return out


def _index(points: Sequence[PointRef]) -> list[int]:
    index = [p.index for p in points]
    if index and index[-1] - index[0] == len(index) - 1 and index == list(range(index[0], index[-1] + 1)):
        return index[:1]
    return index


def _points(
    c: _MetricIn,
    ids: list[str],
    ts: list[datetime | None],
) -> list[PointRef]:
    n = len(c.values)
    index = c.index if len(c.index) == n else list(range(c.index[0], c.index[0] + n)) if n else []
    rows = c.refs or range(n)
    return [PointRef(i, ids[row], v, ts[row]) for i, v, row in zip(index, c.values, rows, strict=True)]


BLOB_PREFIX = "_part."
"""State-bucket keys of the parts records name by digest (``_part.<32 hex digits>``)."""


def part_key(digest: bytes) -> str:
    return BLOB_PREFIX + digest.hex()


class MissingPartError(LookupError):
    """A state record names a part the state bucket does not hold (exact recovery is impossible)."""


class Parts:
    """The parts of state records that seldom change, stored once each under their digest.

    A chart's configuration (the same for every chart of a metric with the same settings) and its
    frozen baseline change only on a settings change or a re-baseline, yet were most of a
    series' record. A record names each by the BLAKE2b-128 digest of its msgpack encoding; the
    part itself is written once (key :func:`part_key`), before the first record naming it and
    in its own put (a record is never stored before the parts it names). Parts are never
    rewritten nor deleted: a record read back always finds what it names (a part no longer
    named, after a re-baseline, stays: a few hundred bytes per baseline a chart ever had).
    """

    __slots__ = ("_by_id", "_read", "_stored", "new")

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[object, bytes, bytes]] = {}
        """By identity (a chart keeps its configuration and baseline objects): (obj, digest, data)."""
        self._stored: set[bytes] = set()
        """Digests known to be in the bucket (written, or read back)."""
        self._read: dict[bytes, bytes] = {}
        """Parts read back, by digest (bounded: reread when dropped)."""
        self.new: dict[bytes, bytes] = {}
        """Parts to write before the records naming them."""

    def ref(self, obj: object) -> bytes:
        """The digest of ``obj``'s part, queued in :attr:`new` when not stored yet."""
        hit = self._by_id.get(id(obj))
        if hit is not None and hit[0] is obj:
            _obj, digest, data = hit
        else:
            if len(self._by_id) > 100_000:
                self._by_id.clear()
            # Builtins: times as RFC 3339 with their offsets (a msgpack timestamp reads back UTC).
            data = _encode(msgspec.to_builtins(obj))
            digest = hashlib.blake2b(data, digest_size=16).digest()
            self._by_id[id(obj)] = (obj, digest, data)
        if digest not in self._stored:
            self.new[digest] = data
        return digest

    def take_new(self) -> list[tuple[str, bytes]]:
        new, self.new = self.new, {}
        return [(part_key(d), data) for d, data in new.items()]

    def stored(self, keys: Iterable[str]) -> None:
        """These parts (as :meth:`take_new` gave them) are stored."""
        self._stored.update(bytes.fromhex(k[len(BLOB_PREFIX) :]) for k in keys)

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        return [d for d in digests if d and d not in self._read and d not in self.new]

    def add_read(self, digest: bytes, data: bytes) -> None:
        if len(self._read) > 10_000:
            self._read.clear()
        self._read[digest] = data
        self._stored.add(digest)

    def get(self, digest: bytes) -> bytes:
        data = self._read.get(digest) or self.new.get(digest)
        if data is None:
            raise MissingPartError(f"state part {digest.hex()} not read")
        return data


def _utc(ts: datetime | None) -> bool:
    return ts is None or ts.tzinfo is UTC


def _rest(state: ChartState) -> object:
    """The state but its recent points and baseline, encodable as msgpack: as is when its times
    are UTC, else with every time written as RFC 3339 (a msgpack timestamp comes back as UTC)."""
    rest = msgspec.structs.replace(state, recent=[], baseline=None)
    first = state.collected_first
    if first is None or _utc(first.ts):
        return rest
    return msgspec.to_builtins(rest)


def encode_series(charts: Iterable[tuple[str, ChartSnapshot, int, int]], parts: Parts | None = None) -> bytes:
    """A series' state record from (metric, snapshot, gen, base) of each of its metric charts;
    the parts it names not stored yet are left in ``parts.new``."""
    parts = parts if parts is not None else Parts()
    table = _Table()
    out: list[_MetricOut] = []
    for metric, snap, gen, base in charts:
        state = snap.state
        recent = state.recent
        refs = table.refs(recent)
        out.append(
            _MetricOut(
                metric=metric,
                seq=snap.seq,
                settings_seq=snap.settings_seq,
                gen=gen,
                base=base,
                config=parts.ref(snap.config),
                state=_rest(state),
                index=_index(recent),
                values=[p.value for p in recent],
                refs=refs,
                baseline=b"" if state.baseline is None else parts.ref(state.baseline),
            )
        )
    return _encode(
        _SeriesOut(version=STATE_VERSION, ids=pack_ids(table.ids), ts=pack_ts(table.ts), charts=out)
    )


def read_series(data: bytes) -> _SeriesIn:
    return _series_decoder.decode(data)


def series_parts(record: _SeriesIn) -> list[bytes]:
    """The digests of the parts a series' record names."""
    out: list[bytes] = []
    for c in record.charts:
        if isinstance(c.config, bytes):
            out.append(c.config)
        if c.baseline:
            out.append(c.baseline)
    return out


def series_charts(
    provider: str, model: str, target: str, prompt_id: str, record: _SeriesIn, part: Callable[[bytes], bytes]
) -> dict[str, Saved]:
    """The metric charts of a series' state record, by metric (``part``: a part's data by digest)."""
    ids = unpack_ids(record.ids)
    out: dict[str, Saved] = {}
    for c in record.charts:
        c.state.recent = _points(c, ids, record.ts)
        if c.baseline:
            c.state.baseline = _baseline_decoder.decode(part(c.baseline))
        config = c.config if isinstance(c.config, ChartConfig) else _config_decoder.decode(part(c.config))
        key = chart_key(provider, model, target, prompt_id, c.metric)
        meta = ChartMeta(provider=provider, model=model, target=target, prompt_id=prompt_id, metric=c.metric)
        snap = ChartSnapshot(
            key=key, meta=meta, seq=c.seq, config=config, state=c.state, settings_seq=c.settings_seq
        )
        out[c.metric] = Saved(snapshot=snap, gen=c.gen, base=c.base)
    return out


def decode_series(
    provider: str, model: str, target: str, prompt_id: str, data: bytes, part: Callable[[bytes], bytes]
) -> dict[str, Saved]:
    """The metric charts of a series' state record, by metric."""
    return series_charts(provider, model, target, prompt_id, read_series(data), part)


def encode_availability(snap: AvailabilitySnapshot, gen: int, base: int, parts: Parts | None = None) -> bytes:
    parts = parts if parts is not None else Parts()
    state = snap.state
    rest = msgspec.structs.replace(state, recent_ids=[])  # no times in it: msgpack as it is
    return _encode(
        _AvailabilityOut(
            version=STATE_VERSION,
            seq=snap.seq,
            gen=gen,
            base=base,
            config=parts.ref(snap.config),
            state=rest,
            ids=pack_ids(state.recent_ids),
        )
    )


def read_availability(data: bytes) -> _AvailabilityIn:
    return _availability_decoder.decode(data)


def availability_chart(key: str, record: _AvailabilityIn, part: Callable[[bytes], bytes]) -> Saved:
    record.state.recent_ids = unpack_ids(record.ids)
    config = (
        record.config
        if isinstance(record.config, AvailabilityConfig)
        else _availability_config_decoder.decode(part(record.config))
    )
    provider, model, target, prompt_id, metric = parse_chart_key(key)
    meta = ChartMeta(provider=provider, model=model, target=target, prompt_id=prompt_id, metric=metric)
    snap = AvailabilitySnapshot(key=key, meta=meta, seq=record.seq, config=config, state=record.state)
    return Saved(snapshot=snap, gen=record.gen, base=record.base)


def decode_availability(key: str, data: bytes, part: Callable[[bytes], bytes]) -> Saved:
    return availability_chart(key, read_availability(data), part)


# -- the store ----------------------------------------------------------------------------------


class _Shown:
    """What a chart's public record shows, as last written (or as read back, in JSON)."""

    __slots__ = ("meta", "view")

    def __init__(self, meta: object, view: object) -> None:
        self.meta = meta
        self.view = view


class ChartStore:
    """Loads charts for the :class:`Engine` and writes what changed (see the module doc)."""

    def __init__(self, charts: KeyValue, state: KeyValue) -> None:
        self._charts = charts
        self._state = state
        self._gen: dict[str, int] = {}
        """Per chart in memory: the generation of its public record, as written or read."""
        self._base: dict[str, int] = {}
        """Per chart continued from a record of an engine before the split: that record's revision."""
        self._shown: dict[str, _Shown] = {}
        """Per chart: what its public record shows (absent: write it at the next snapshot)."""
        self._series: dict[str, dict[str, Saved]] = {}
        """State read back, per series, of metric charts not loaded into the engine yet: written
        again with the series' loaded ones (a record holds every chart of its series)."""
        self._parts = Parts()
        self._unsaved: dict[str, None] = {}
        """Charts that took points since their state was last written (in order)."""
        self._legacy: set[str] = set()
        """Charts loaded from a record of an engine before the split, their state not written yet."""

    # -- loading -----------------------------------------------------------------------------
    async def _get(self, kv: KeyValue, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return entry.value, entry.revision or 0

    async def load(self, key: str) -> Snapshot | None:
        """A chart's snapshot to continue from (None: a new chart); see the consistency rule."""
        provider, model, target, prompt_id, metric = parse_chart_key(key)
        public = await self._get(self._charts, key)
        saved: Saved | None
        if metric == AVAILABILITY:
            got = await self._get(self._state, key)
            if got is None:
                saved = None
            else:
                availability = read_availability(got[0])
                if isinstance(availability.config, bytes):
                    await self._read_parts([availability.config])
                saved = availability_chart(key, availability, self._parts.get)
        else:
            skey = series_key(provider, model, target, prompt_id)
            series = self._series.get(skey)
            if series is None:
                got = await self._get(self._state, skey)
                if got is None:
                    series = {}
                else:
                    record = read_series(got[0])
                    await self._read_parts(series_parts(record))
                    series = series_charts(provider, model, target, prompt_id, record, self._parts.get)
                self._series[skey] = series
            saved = series.pop(metric, None)
        return self._choose(key, public, saved)

    async def _read_parts(self, digests: Iterable[bytes]) -> None:
        for digest in self._parts.missing(digests):
            got = await self._get(self._state, part_key(digest))
            if got is None:
                # Written before any record naming it: only a bucket that lost writes lacks it.
                raise MissingPartError(f"state part {part_key(digest)} is missing from the state bucket")
            self._parts.add_read(digest, got[0])

    def _choose(self, key: str, public: tuple[bytes, int] | None, saved: Saved | None) -> Snapshot | None:
        self._shown.pop(key, None)
        self._base.pop(key, None)
        self._legacy.discard(key)
        if public is None:
            # Never shown (a crash between the state write and the public write): shown next.
            self._gen[key] = saved.gen if saved is not None else 0
            if saved is not None and saved.base:
                self._base[key] = saved.base
            return saved.snapshot if saved is not None else None
        data, revision = public
        stored = _stored_decoder.decode(data)
        if stored.state:
            # A record of an engine before the split, with its full state.
            self._gen[key] = max(stored.gen, saved.gen if saved is not None else 0)
            if saved is not None and saved.base == revision:
                self._base[key] = revision
                return self._named(saved.snapshot, stored)
            if saved is not None:
                log.warning(
                    "chart state older than its public record ignored", key=key, seq=saved.snapshot.seq
                )
            self._base[key] = revision
            # Its record holds the only copy of its past until its state is written: not
            # replaced before that (a public-only snapshot, LLMSCOPE_SPC_STATE_INTERVAL_S).
            self._legacy.add(key)
            full = decode_snapshot(key, data)
            return self._named(full, stored)
        self._gen[key] = max(stored.gen, saved.gen if saved is not None else 0)
        if saved is None:
            # Shown before its state was first written (LLMSCOPE_SPC_STATE_INTERVAL_S): every
            # point it took is after the checkpoint, and the replay charts them again.
            log.info("chart has no state yet: charted again from the replay", key=key)
            return None
        # A state behind its public record (written between two state writes) is as exact: the
        # checkpoint is no further than the state, and the replay shows the same again.
        if saved.base:
            self._base[key] = saved.base
        if saved.gen == stored.gen:
            self._shown[key] = _Shown(bytes(stored.meta), bytes(stored.view or stored.availability))
        return self._named(saved.snapshot, stored)

    @staticmethod
    def _named(snap: Snapshot, stored: _Stored) -> Snapshot:
        """The snapshot with the meta of the public record (its host), as before the split."""
        if stored.meta:
            snap.meta = msgspec.json.decode(stored.meta, type=ChartMeta)
        return snap

    # -- writing -----------------------------------------------------------------------------
    def _changed(self, key: str, meta: ChartMeta, view: object) -> bool:
        shown = self._shown.get(key)
        if shown is None:
            return True
        if isinstance(shown.view, bytes):
            # As read back at load: compared once by its JSON, then by identity.
            if _json(meta) != shown.meta or _json(view) != shown.view:
                return True
            shown.meta, shown.view = meta, view
            return False
        if isinstance(view, AvailabilityView):
            return shown.meta is not meta or shown.view != view
        return shown.meta is not meta or shown.view is not view

    def _record(self, key: str, meta: ChartMeta, seq: int, view: object, now: datetime) -> bytes:
        """A changed chart's public record, its generation bumped (the view is now shown)."""
        gen = self._gen[key] = self._gen.get(key, 0) + 1
        self._shown[key] = _Shown(meta, view)
        record: PublicChart | PublicAvailability
        if isinstance(view, AvailabilityView):
            record = PublicAvailability(
                key=key, meta=meta, seq=seq, updated_at=now, availability=view, gen=gen
            )
        else:
            assert isinstance(view, ChartView)
            record = PublicChart(key=key, meta=meta, seq=seq, updated_at=now, view=view, gen=gen)
        return _json(record)

    async def write(self, engine: Engine, dirty: Sequence[str], now: datetime, *, state: bool = True) -> None:
        """Write the public records of ``dirty`` whose view changed; with ``state``, first the
        state of the series and availability charts that took points since the last time (the
        consistency rule: the state never behind the public record, but where the checkpoints
        are not moved either)."""
        charts = engine.charts
        self._unsaved.update(dict.fromkeys(dirty))
        if state:
            dirty, self._unsaved = [k for k in self._unsaved if k in charts], {}
        else:
            dirty = [k for k in dirty if k in charts]
        public: list[tuple[str, bytes]] = []
        if not state:
            # Public records only (each second): the views of the charts that took a point, a
            # record for those that changed; no snapshot of their state is built.
            for key in dirty:
                if key in self._legacy:
                    continue
                meta, seq, shown = engine.public_view(key)
                if self._changed(key, meta, shown):
                    public.append((key, self._record(key, meta, seq, shown, now)))
            await put_many(self._charts, public)
            return
        saves: list[tuple[str, bytes]] = []
        series: dict[str, tuple[str, str, str, str]] = {}
        snaps: dict[str, Snapshot] = {}
        for key in dirty:
            entry = charts[key]
            meta = entry.meta
            snap = snaps[key] = engine.snapshot(key, now)
            view: object = snap.view if isinstance(snap, ChartSnapshot) else snap.availability
            if self._changed(key, meta, view):
                public.append((key, self._record(key, meta, snap.seq, view, now)))
            if isinstance(snap, AvailabilitySnapshot):
                saves.append(
                    (
                        key,
                        encode_availability(snap, self._gen.get(key, 0), self._base.get(key, 0), self._parts),
                    )
                )
            else:
                series[series_key(meta.provider, meta.model, meta.target, meta.prompt_id)] = (
                    meta.provider,
                    meta.model,
                    meta.target,
                    meta.prompt_id,
                )
        for skey, (provider, model, target, prompt_id) in series.items():
            members: list[tuple[str, ChartSnapshot, int, int]] = []
            unloaded = self._series.get(skey, {})
            for metric in CHARTED_METRICS:
                key = chart_key(provider, model, target, prompt_id, metric)
                if key in charts:
                    got = snaps.get(key) or engine.snapshot(key)
                    assert isinstance(got, ChartSnapshot)
                    members.append((metric, got, self._gen.get(key, 0), self._base.get(key, 0)))
                elif metric in unloaded:
                    saved = unloaded[metric]
                    assert isinstance(saved.snapshot, ChartSnapshot)
                    members.append((metric, saved.snapshot, saved.gen, saved.base))
            saves.append((skey, encode_series(members, self._parts)))
        parts = self._parts.take_new()
        if parts:
            # Stored before any record naming them (see Parts): a put of their own, awaited.
            await put_many(self._state, parts)
            self._parts.stored(k for k, _ in parts)
        await put_many(self._state, saves)
        if state:
            self._legacy.difference_update(dirty)  # their state is written now
        await put_many(self._charts, public)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop what is known of these charts (their partition moves: the next owner writes them)."""
        for key in keys:
            self._unsaved.pop(key, None)
            self._legacy.discard(key)
            self._gen.pop(key, None)
            self._base.pop(key, None)
            self._shown.pop(key, None)

    def forget_series(self, belongs: Callable[[str, str], bool]) -> None:
        """Drop the unloaded state of every series ``belongs(provider, model)`` says."""
        for skey in list(self._series):
            provider, model, _target, _prompt = subjects.parse_kv_key(skey, 4)
            if belongs(provider, model):
                del self._series[skey]
