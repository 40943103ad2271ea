"""The per-point path gives the same signals and states, bit for bit, as when these digests were
recorded (before the path was tuned for speed).

Phase I is left out on purpose: every chart starts armed on a fixed baseline, so these digests
change only when the per-point path (the detectors, episodes, the engine's bookkeeping) changes
what it computes. A change that is meant to change results records new digests with
``python -m tests.spc_engine.test_hot_path``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import sys
from datetime import UTC, datetime, timedelta

import msgspec

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.chart import MODEL_VERSION, Baseline, ChartState, MetricChart, Signal
from llmscope.spc_engine.charts.cusum import CusumChart
from llmscope.spc_engine.charts.ewma import EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsState
from llmscope.spc_engine.config import ChartConfig, default_config
from llmscope.spc_engine.engine import Engine
from llmscope.spc_engine.rules import RulesConfig
from tests.spc_engine.helpers import probe

T0 = datetime(2025, 1, 1, tzinfo=UTC)
N = 12_000


def _baseline(center: float, sigma: float, ar: tuple[float, ...]) -> Baseline:
    sigma_e = sigma * math.sqrt(1.0 - sum(a * a for a in ar))
    return Baseline(
        id="b-test",
        number=1,
        center=center,
        sigma=sigma,
        n=1000,
        first_index=-1000,
        last_index=-1,
        model=MODEL_VERSION,
        ar=ar,
        sigma_e=sigma_e,
        w_mean=0.01,
        w_sd=0.97,
        tail_rate=0.01,
        spike_rate=0.004,
        spike_excess=0.6,
        worst=4.1,
        lag_corr=ar,
    )


def _armed(config: ChartConfig, baseline: Baseline) -> MetricChart:
    c = config.cusum
    state = ChartState(
        model=MODEL_VERSION,
        prompt_hash="h",
        baseline_number=1,
        baseline=baseline,
        individuals=IndividualsState(),
        ewma=EwmaState(),
        cusum=CusumChart(c.k, c.h, c.cap).state,
        hist=[baseline.center] * len(baseline.ar),
    )
    return MetricChart(config, key=f"chart-{config.worse}", state=state)


def _series(seed: int, center: float, sigma: float, phi: float) -> list[float]:
    """AR(1) on the log scale with shifts both ways, a drift, spikes and values a log refuses."""
    rng = random.Random(seed)
    out: list[float] = []
    e = 0.0
    for i in range(N):
        e = phi * e + math.sqrt(1 - phi * phi) * rng.gauss(0, 1)
        shift = 0.0
        if 2000 <= i < 2400:
            shift = 1.0
        elif 4000 <= i < 4300:
            shift = -1.5
        elif 6000 <= i < 7000:
            shift = (i - 6000) / 500.0
        elif 8000 <= i < 8050:
            shift = 4.0
        y = center + sigma * (e + shift)
        if rng.random() < 0.003:
            y += sigma * rng.choice((6.0, -6.0))
        x = math.exp(y)
        if i % 997 == 0:
            x = 0.0  # refused by the log transform
        elif i % 1499 == 0:
            x = math.nan
        out.append(x)
    return out


def _chart_digest(config: ChartConfig, ar: tuple[float, ...], seed: int) -> tuple[str, int]:
    center, sigma = math.log(800.0), 0.25
    chart = _armed(config, _baseline(center, sigma, ar))
    signals: list[Signal] = []
    for i, x in enumerate(_series(seed, center, sigma, ar[0] if ar else 0.0)):
        signals += chart.update(x, point_id=f"p{i}", ts=T0 + timedelta(seconds=i))
    h = hashlib.sha256(msgspec.json.encode(signals))
    h.update(msgspec.json.encode(chart.state))
    return h.hexdigest()[:24], len(signals)


ALL_RULES = ChartConfig(rules=RulesConfig().only({1, 2, 3, 4, 5, 6, 7, 8}), page_better=True)
CASES: dict[str, tuple[ChartConfig, tuple[float, ...], int]] = {
    "latency, AR(2)": (default_config("latency_ms"), (0.3, 0.1), 1),
    "tokens/s (worse down), independent": (default_config("tokens_per_s"), (), 2),
    "all Nelson tests, both ways page, AR(1)": (ALL_RULES, (0.5,), 3),
}
EXPECTED: dict[str, tuple[str, int]] = {
    "latency, AR(2)": ("46ed98825b91e9456c369a4b", 218),
    "tokens/s (worse down), independent": ("ef80a44870b7c53b55e602ed", 238),
    "all Nelson tests, both ways page, AR(1)": ("95c7b79db60e6ce35305dda2", 698),
}


def _events(n: int) -> list[TelemetryEvent]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        model = f"m{i % 3}"
        prompt = ("simple", "medium")[(i // 3) % 2]
        failed = rng.random() < 0.03
        factor = 1.8 if 3000 <= i < 3600 else (0.6 if 5000 <= i < 5400 else 1.0)
        latency = (300.0 if prompt == "simple" else 1200.0) * factor * math.exp(0.25 * rng.gauss(0, 1))
        tokens_per_s = None if failed else 50.0 / factor * math.exp(0.1 * rng.gauss(0, 1))
        event_id = f"ev-{i}" if i % 501 else f"ev-{i - 1}"  # now and then an id seen before
        out.append(probe(i, event_id, model, prompt, None if failed else latency, tokens_per_s))
    return out


def _known(metric: str) -> ChartConfig:
    # Known parameters: armed from the first point, whatever Phase I does.
    center = {"latency_ms": 700.0, "ttft_ms": 140.0, "tokens_per_s": 50.0}[metric]
    return msgspec.structs.replace(default_config(metric), center=center, sigma=0.6)


async def _engine_digest() -> tuple[str, int]:
    engine = Engine(config_for=_known)
    h = hashlib.sha256()
    count = 0
    events = _events(8000)
    for seq, ev in enumerate(events, start=1):
        # Every 1000th message comes again (a redelivery): skipped by its sequence.
        for s in (seq, seq - 1) if seq % 1000 == 0 else (seq,):
            for v in await engine.on_telemetry(ev, s):
                h.update(msgspec.json.encode(v))
                count += 1
    for key in sorted(engine.charts):
        entry = engine.charts[key]
        # The states, not whole snapshots: a view holds figures (the ARL) computed outside the
        # per-point path, which is this test's business.
        h.update(msgspec.json.encode((key, entry.seq, entry.chart.state)))
    return h.hexdigest()[:24], count


ENGINE_EXPECTED = ("d1e52eef822ff08d8c72c635", 136)  # violation text says "over"/"under"


def test_chart_signals_and_states_are_unchanged() -> None:
    got = {name: _chart_digest(*case) for name, case in CASES.items()}
    assert all(n > 10 for _, n in got.values())  # the series make every chart signal
    assert got == EXPECTED


def test_engine_events_and_snapshots_are_unchanged() -> None:
    got = asyncio.run(_engine_digest())
    assert got[1] > 10
    assert got == ENGINE_EXPECTED


if __name__ == "__main__":
    for name, case in CASES.items():
        print(f"    {name!r}: {_chart_digest(*case)!r},")
    print("engine", asyncio.run(_engine_digest()))
    sys.exit(0)
