"""Requests of real traffic -> one ``traffic_minute.v1`` event per minute and subgroup (pure).

A subgroup is (provider, model, service, operation); a request belongs to the minute its span
started in (its ``ts``). Minutes close by the *stream's* clock, not the events': the watermark is
the latest JetStream storage time of a message the aggregator has seen (every message of the
partition advances it, probes too), and minute ``[m, m + 60 s)`` closes once the watermark is
``grace_s`` past its end. The storage time is part of the stream, so a replay from a checkpoint
closes the same minutes with the same requests. A partition that has gone quiet is advanced by
the service with the wall clock once it has read everything (:meth:`MinuteAggregator.advance`).

A request whose minute has closed already is *late*: it is in no minute, counted
(:attr:`AggregatorState.late_total`) and reported in the next minute of its subgroup that closes.
Each minute keeps at most ``max_values`` values per quantity (the first ones): ``n`` and the error
count are exact, the quantiles of a busier minute are over its first requests (``sampled``).
"""

from __future__ import annotations

import hashlib
import math
from array import array
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.traffic import Quantiles, TrafficMinuteEvent

UNKNOWN_SERVICE = "unknown_service"
"""The OpenTelemetry SDKs' ``service.name`` when an application sets none."""
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class OpenMinute(msgspec.Struct, kw_only=True):
    """What one minute of one subgroup has collected so far. Values are float32 bytes (compact
    snapshots: a busy minute holds thousands)."""

    n: int = 0
    errors: int = 0
    lpt: bytearray = msgspec.field(default_factory=bytearray)
    ttft: bytearray = msgspec.field(default_factory=bytearray)
    latency: bytearray = msgspec.field(default_factory=bytearray)
    out_tokens: int = 0
    out_n: int = 0
    in_tokens: int = 0
    in_n: int = 0
    sampled: bool = False


class Subgroup(msgspec.Struct, kw_only=True):
    provider: str
    model: str
    service_name: str
    operation: str
    minutes: dict[int, OpenMinute] = msgspec.field(default_factory=dict)
    """Open minutes by their start (epoch seconds / window)."""
    late: int = 0
    """Late requests not yet reported in a closed minute."""


class AggregatorState(msgspec.Struct, kw_only=True):
    """Everything needed to continue exactly (snapshotted with the partition's checkpoint; the
    service stores each subgroup under a key of its own)."""

    version: int = 1
    seq: int = 0
    """Last telemetry stream sequence applied."""
    watermark: float = 0.0
    """Latest stream time seen (epoch seconds)."""
    groups: dict[str, Subgroup] = msgspec.field(default_factory=dict)
    late_total: int = 0
    closed_total: int = 0


def group_key(provider: str, model: str, service: str, operation: str) -> str:
    return f"{provider}|{model}|{service}|{operation}"


def subgroup_of(ev: TelemetryEvent) -> tuple[str, str, str, str]:
    operation = ev.prompt_id.split(":", 1)[1] if ":" in ev.prompt_id else ev.prompt_id
    return ev.provider, ev.model, ev.service_name or UNKNOWN_SERVICE, operation


def minute_id(
    provider: str, model: str, service: str, operation: str, minute: int, window_s: int = 60
) -> str:
    """The event id of a closed minute (``minute``: its start in windows since the epoch)."""
    window = "" if window_s == 60 else f"|{window_s}"
    digest = hashlib.sha256(f"{provider}|{model}|{service}|{operation}|{minute}{window}".encode()).hexdigest()
    return "tm-" + digest[:32]


def quantiles(values: bytearray) -> Quantiles | None:
    if not values:
        return None
    xs = np.frombuffer(values, dtype=np.float32).astype(np.float64)
    qs = np.quantile(xs, QUANTILES)
    return Quantiles(
        n=len(xs),
        p25=float(qs[0]),
        p50=float(qs[1]),
        p75=float(qs[2]),
        p90=float(qs[3]),
        p95=float(qs[4]),
        p99=float(qs[5]),
    )


def _append(values: bytearray, x: float, cap: int) -> bool:
    """Append x (float32) unless ``cap`` values are there; whether it fit."""
    if len(values) >= 4 * cap:
        return False
    values += array("f", [x]).tobytes()
    return True


class MinuteAggregator:
    """Per-minute subgroups of a partition's traffic; ``add`` and ``advance`` return the minutes
    they closed, in order (by minute, then subgroup)."""

    def __init__(
        self,
        *,
        grace_s: float = 10.0,
        window_s: int = 60,
        min_requests: int = 10,
        max_values: int = 10_000,
        state: AggregatorState | None = None,
    ) -> None:
        self.grace_s = grace_s
        self.window_s = window_s
        self.min_requests = min_requests
        self.max_values = max_values
        self.state = state or AggregatorState()
        self.touched: set[str] = set()
        """Subgroups changed since the caller last emptied this (what a snapshot must write)."""

    def closed(self, minute: int) -> bool:
        return (minute + 1) * self.window_s + self.grace_s <= self.state.watermark

    def add(self, ev: TelemetryEvent, stored: datetime, seq: int = 0) -> list[TrafficMinuteEvent]:
        """Count one request stored at ``stored`` (the stream's time); skipped when its ``seq``
        was applied already (a replay)."""
        st = self.state
        if seq and seq <= st.seq:
            return []
        if seq:
            st.seq = seq
        out = self.advance(stored)
        minute = math.floor(ev.ts.timestamp() / self.window_s)
        key = group_key(*subgroup_of(ev))
        self.touched.add(key)
        group = st.groups.get(key)
        if group is None:
            provider, model, service, operation = subgroup_of(ev)
            group = st.groups[key] = Subgroup(
                provider=provider, model=model, service_name=service, operation=operation
            )
        if self.closed(minute):
            group.late += 1
            st.late_total += 1
            return out
        m = group.minutes.get(minute)
        if m is None:
            m = group.minutes[minute] = OpenMinute()
        m.n += 1
        if not ev.ok:
            m.errors += 1
            return out
        fit = True
        if ev.latency_ms is not None:
            fit &= _append(m.latency, ev.latency_ms, self.max_values)
            if ev.eval_count:
                fit &= _append(m.lpt, ev.latency_ms / ev.eval_count, self.max_values)
        if ev.ttft_ms is not None:
            fit &= _append(m.ttft, ev.ttft_ms, self.max_values)
        m.sampled |= not fit
        if ev.eval_count is not None:
            m.out_tokens += ev.eval_count
            m.out_n += 1
        if ev.prompt_eval_count is not None:
            m.in_tokens += ev.prompt_eval_count
            m.in_n += 1
        return out

    def observe(self, stored: datetime, seq: int = 0) -> list[TrafficMinuteEvent]:
        """A message of the partition that is no traffic (a probe): it moves the clock only."""
        if seq and seq <= self.state.seq:
            return []
        if seq:
            self.state.seq = seq
        return self.advance(stored)

    def advance(self, now: datetime) -> list[TrafficMinuteEvent]:
        """Move the watermark to ``now`` (never back) and close the minutes it passes."""
        st = self.state
        t = now.timestamp()
        if t <= st.watermark:
            return []
        st.watermark = t
        due: list[tuple[int, str]] = [
            (minute, key) for key, g in st.groups.items() for minute in g.minutes if self.closed(minute)
        ]
        out = []
        for minute, key in sorted(due):
            group = st.groups[key]
            self.touched.add(key)
            out.append(self._close(group, minute, group.minutes.pop(minute)))
        return out

    def _close(self, g: Subgroup, minute: int, m: OpenMinute) -> TrafficMinuteEvent:
        start = datetime.fromtimestamp(minute * self.window_s, UTC)
        late, g.late = g.late, 0
        self.state.closed_total += 1
        return TrafficMinuteEvent(
            id=minute_id(g.provider, g.model, g.service_name, g.operation, minute, self.window_s),
            ts=start,
            window_end=start + timedelta(seconds=self.window_s),
            window_s=self.window_s,
            provider=g.provider,  # type: ignore[arg-type]
            model=g.model,
            service_name=g.service_name,
            operation=g.operation,
            n=m.n,
            errors=m.errors,
            late=late,
            min_requests=self.min_requests,
            latency_per_token_ms=quantiles(m.lpt),
            ttft_ms=quantiles(m.ttft),
            latency_ms=quantiles(m.latency),
            output_tokens_mean=m.out_tokens / m.out_n if m.out_n else None,
            input_tokens_mean=m.in_tokens / m.in_n if m.in_n else None,
            sampled=m.sampled,
        )

    def dump(self) -> bytes:
        return msgspec.json.encode(self.state)

    @staticmethod
    def load(data: bytes) -> AggregatorState:
        return msgspec.json.decode(data, type=AggregatorState)
