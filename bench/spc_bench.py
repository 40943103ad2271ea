"""SPC engine benchmark: chart code alone, through NATS, and the default configuration's statistics.

Not a test: it prints figures. Rates on a shared machine vary run to run, so every rate is printed
next to a baseline measured in the same run, and the ratio is the figure to compare:

(a) chart code alone: ``Engine.on_telemetry`` over synthetic telemetry spread over ~100
    model/prompt charts, on one pinned core; baseline: msgspec decode of the same events.
(b) through NATS: a real embedded nats-server (JetStream, file storage); the raw nats-py consume
    rate (``fetch()`` + ack each, no work) and the same by hand (pull requests to a callback
    subscription, AckAll per batch); the consumer adapter with a no-op handler; the SPC service
    (consume -> chart -> publish violations -> ack). Python client pinned to one core, the
    server on the others.
(c) the default configuration's critical false-alarm rate, detection delays and pages per sustained
    shift on realistic latency (independent, autocorrelated, heavy-tailed, both), every chart's
    model estimated from its own baseline (``llmscope.spc_engine.performance``), each next to issue
    7's target; on autocorrelated data also the same charts with serial dependence ignored.

Section (b) runs on asyncio's event loop and then on uvloop's (``--loops``), in the same run.

Usage: ``python bench/spc_bench.py [--quick] [--events N] [--stats-only | --no-stats]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats
import numpy as np
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.kv import open_bucket
from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.config import eventloop
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine import performance
from llmscope.spc_engine.config import (
    DEFAULT_BASELINE_N,
    DEFAULT_MIN_CHANGE,
    DEFAULT_MIN_SPIKE_CHANGE,
    default_config,
)
from llmscope.spc_engine.engine import Engine
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service import SpcService, tune_gc
from llmscope.spc_engine.settings import SpcSettings
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.one_at_a_time import run_alone

MODELS = 34
PROMPTS = {"simple": (300.0, 64), "medium": (1200.0, 256), "complex": (3500.0, 768)}
"""prompt id -> (median latency ms, max tokens): 34 models x 3 prompts = 102 charts per metric."""
T0 = datetime(2025, 1, 1, tzinfo=UTC)
BATCH = 256


# --------------------------------------------------------------------------------------------
# Synthetic telemetry


def synthetic_telemetry(n: int, seed: int = 1) -> list[TelemetryEvent]:
    """``n`` in-control probes, round-robin over MODELS x PROMPTS; about 1% fail."""
    rng = random.Random(seed)
    prompts = list(PROMPTS.items())
    groups = [(m, p) for m in range(MODELS) for p in range(len(prompts))]
    out = []
    for i in range(n):
        m, p = groups[i % len(groups)]
        prompt, (median, max_tokens) = prompts[p]
        model = f"bench-model-{m:02d}:8b"
        failed = rng.random() < 0.01
        latency = median * math.exp(0.3 * rng.gauss(0, 1))
        tokens = max_tokens - rng.randrange(0, max_tokens // 4)
        out.append(
            TelemetryEvent(
                id=f"bench-{seed}-{i:08d}",
                ts=T0 + timedelta(milliseconds=20 * i),
                provider="ollama",
                model=model,
                target=f"local-{m:02d}",
                host="gpu-host-1",
                prober="bench",
                prompt_id=prompt,
                prompt_class=prompt,
                prompt_hash=f"{p:064x}",
                streaming=True,
                max_tokens=max_tokens,
                status="timeout" if failed else "ok",
                error="deadline exceeded" if failed else None,
                latency_ms=None if failed else latency,
                ttft_ms=None if failed else latency * 0.15 * math.exp(0.2 * rng.gauss(0, 1)),
                eval_count=None if failed else tokens,
                tokens_per_s=None if failed else 45.0 * math.exp(0.1 * rng.gauss(0, 1)),
                cpu_percent=round(rng.uniform(5, 40), 1),
                memory_percent=round(rng.uniform(30, 60), 1),
            )
        )
    return out


def armed_after(events: Sequence[TelemetryEvent], baseline_n: int) -> int | None:
    """Index of the first event after which every metric chart has its baseline (None: never)."""
    counts: dict[tuple[str, str], int] = {}
    groups = MODELS * len(PROMPTS)
    armed = 0
    for i, ev in enumerate(events):
        if ev.ok:
            key = (ev.model, ev.prompt_id)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == baseline_n:
                armed += 1
                if armed == groups:
                    return i + 1
    return None


# --------------------------------------------------------------------------------------------
# Output helpers


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.inf


def fmt_rate(r: float) -> str:
    return f"{r:>11,.0f} /s"


def line(label: str, value: str, note: str = "") -> None:
    print(f"{label:<52} {value:>16}  {note}".rstrip())


# --------------------------------------------------------------------------------------------
# (a) chart code alone


async def _engine_pass(events: Sequence[TelemetryEvent], split: int | None) -> tuple[float, float, int]:
    engine = Engine()
    published = 0
    cut = split if split is not None else len(events)
    t0 = time.perf_counter()
    for seq, ev in enumerate(events[:cut], start=1):
        published += len(await engine.on_telemetry(ev, seq))
    t1 = time.perf_counter()
    for seq, ev in enumerate(events[cut:], start=cut + 1):
        published += len(await engine.on_telemetry(ev, seq))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, published


def chart_alone(events: Sequence[TelemetryEvent], payloads: Sequence[bytes]) -> float:
    """Prints section (a); returns the chart code's rate over all events."""
    n = len(events)
    split = armed_after(events, DEFAULT_BASELINE_N)
    print(f"\n== (a) chart code alone, one core: {n:,} events, {MODELS * len(PROMPTS)} model/prompt charts")
    print(
        f"   (x3 metrics + {MODELS} availability charts; default config, baseline {DEFAULT_BASELINE_N}; "
        f"all charts armed after event {split if split is not None else 'n/a'})"
    )
    mean_size = sum(map(len, payloads)) / n
    best_decode = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for p in payloads:
            codec.decode_as(p, TelemetryEvent)
        best_decode = min(best_decode, time.perf_counter() - t0)
    decode_rate = rate(n, best_decode)
    collecting, armed, published = asyncio.run(_engine_pass(events, split))
    total_rate = rate(n, collecting + armed)
    line(f"baseline: msgspec decode ({mean_size:.0f} B JSON)", fmt_rate(decode_rate), "best of 3")
    line(
        "Engine.on_telemetry, all events", fmt_rate(total_rate), f"= {total_rate / decode_rate:.3f} x decode"
    )
    if split is not None and split < n:
        collect_rate = rate(split, collecting)
        armed_rate = rate(n - split, armed)
        line(
            f"  while collecting baselines (first {split:,})",
            fmt_rate(collect_rate),
            f"= {collect_rate / decode_rate:.3f} x decode",
        )
        line(
            f"  all charts armed (last {n - split:,})",
            fmt_rate(armed_rate),
            f"= {armed_rate / decode_rate:.3f} x decode",
        )
    line("violation events produced (all severities)", f"{published:>16,}")
    return total_rate


# --------------------------------------------------------------------------------------------
# (b) through NATS


@dataclass
class NatsFigures:
    publish: float = 0.0
    raw_fetch: float = 0.0
    raw_by_hand: float = 0.0
    adapter: float = 0.0
    service: float = 0.0
    service_published: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU of this process per event, µs, by path: robust where the wall clock is shared."""


async def _publish(
    js: JetStreamContext, events: Sequence[TelemetryEvent], payloads: Sequence[bytes]
) -> float:
    t0 = time.perf_counter()
    window = 2000
    for start in range(0, len(events), window):
        acks = [
            await js.publish_async(
                subjects.telemetry(ev.provider, ev.model), payload, headers={"Nats-Msg-Id": ev.id}
            )
            for ev, payload in zip(
                events[start : start + window], payloads[start : start + window], strict=True
            )
        ]
        await asyncio.gather(*acks)
    return rate(len(events), time.perf_counter() - t0)


async def _raw_fetch(url: str, n: int) -> float:
    """nats-py's own pull consumer: ``fetch(BATCH)`` then ``ack()`` each message; no work."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subjects.TELEMETRY_ALL, durable="bench-raw-fetch", stream=subjects.STREAM_TELEMETRY
        )
        got = 0
        t0 = time.perf_counter()
        while got < n:
            try:
                msgs = await sub.fetch(BATCH, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                await m.ack()
            got += len(msgs)
        elapsed = time.perf_counter() - t0
        await sub.unsubscribe()
        return rate(got, elapsed) if got == n else math.nan
    finally:
        await nc.close()


async def _raw_by_hand(url: str, n: int) -> float:
    """Pull requests sent by hand to a callback subscription, AckAll on each batch's last message."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        durable = "bench-raw-hand"
        await js.add_consumer(
            subjects.STREAM_TELEMETRY,
            config=ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, max_ack_pending=20_000),
        )
        inbox = nc.new_inbox()
        done = asyncio.Event()
        got = 0
        in_batch = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal got, in_batch
            if not msg.reply:  # a status message (408/404): the request expired
                return
            got += 1
            in_batch += 1
            if in_batch == BATCH or got == n:
                in_batch = 0
                await msg.ack()
                if got >= n:
                    done.set()
                else:
                    await request()

        async def request() -> None:
            body = json.dumps({"batch": BATCH, "expires": 2_000_000_000}).encode()
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_TELEMETRY}.{durable}", body, reply=inbox
            )

        sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * BATCH)
        t0 = time.perf_counter()
        await request()
        try:
            await asyncio.wait_for(done.wait(), 120)
        except TimeoutError:
            return math.nan
        elapsed = time.perf_counter() - t0
        await sub.unsubscribe()
        return rate(got, elapsed)
    finally:
        await nc.close()


async def _adapter(url: str, n: int) -> float:
    """The project's DurableConsumer with a handler that does nothing."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        done = asyncio.Event()
        got = 0

        async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
            nonlocal got
            got += len(batch)
            if got >= n:
                done.set()

        consumer = DurableConsumer(
            js=js,
            stream=subjects.STREAM_TELEMETRY,
            durable="bench-adapter",
            filter_subjects=[subjects.TELEMETRY_ALL],
            decode=lambda data: codec.decode_as(data, TelemetryEvent),
            handler=handler,
            dead_letters=DeadLetters(Publisher(js), "bench"),
            options=ConsumerOptions(batch_size=BATCH),
        )
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.wait_for(done.wait(), 300)
        except TimeoutError:
            return math.nan
        finally:
            elapsed = time.perf_counter() - t0
            stop.set()
            await asyncio.wait_for(task, 10)
        return rate(n, elapsed)
    finally:
        await nc.close()


async def _all_acked(js: JetStreamContext, durables: Sequence[str], n: int) -> bool:
    """Whether the partition consumers together have acked ``n`` messages with none pending."""
    acked = 0
    for durable in durables:
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
            continue  # a partition that has not started yet, or has nothing
        if info.num_pending or info.num_ack_pending:
            return False
        acked += info.ack_floor.consumer_seq if info.ack_floor is not None else 0
    return acked >= n


def _charted(service: SpcService) -> float:
    """Telemetry events the service has charted (its own counter, read in-process)."""
    return sum(
        s.value for m in service.metrics.telemetry.collect() for s in m.samples if s.name.endswith("_total")
    )


async def _service(url: str, n: int) -> tuple[float, int]:
    """The SPC service as ``serve()`` wires it (default chart config), until every event is acked."""
    settings = SpcSettings(bus=BusSettings(nats_url=url), batch_size=BATCH)
    nc = await nats.connect(url)
    monitor = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await open_bucket(js, settings.charts_bucket, description="bench")
        service = SpcService(settings, nc, js, kv)
        mjs = monitor.jetstream()
        durables = [partition_durable(k) for k in range(settings.partitions)]
        stop = asyncio.Event()
        # The collector as the engine's process sets it at start (``serve``), for this run only:
        # the raw consume baseline runs with CPython's default.
        threshold = gc.get_threshold()
        tune_gc()
        t0 = time.perf_counter()
        task = asyncio.create_task(service.run(stop))
        elapsed = math.nan
        try:
            while time.perf_counter() - t0 < 300 and not task.done():
                await asyncio.sleep(0.05)
                # Ask the server (16 consumer infos, parsed by nats-py: ~40 ms of this process's
                # CPU per second of polling, billed to the service) only once every event was
                # charted; the acks follow within the service's AckAll interval.
                if _charted(service) >= n and await _all_acked(mjs, durables, n):
                    elapsed = time.perf_counter() - t0
                    break
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            gc.set_threshold(*threshold)
        if service.failed is not None:
            raise RuntimeError(f"the service failed: {service.failed!r}")
        if math.isnan(elapsed):
            raise RuntimeError(f"the service did not ack all {n:,} events within 300 s")
        return rate(n, elapsed), service.published
    finally:
        await nc.close()
        await monitor.close()


async def _through_nats(url: str, events: Sequence[TelemetryEvent], payloads: Sequence[bytes]) -> NatsFigures:
    n = len(events)
    figures = NatsFigures()
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings(nats_url=url))
        figures.publish = await _publish(js, events, payloads)
    finally:
        await nc.close()
    cpu = time.process_time()

    def took(path: str) -> None:
        nonlocal cpu
        now = time.process_time()
        figures.cpu_us[path] = 1e6 * (now - cpu) / n
        cpu = now

    figures.raw_fetch = await _raw_fetch(url, n)
    took("raw")
    figures.raw_by_hand = await _raw_by_hand(url, n)
    took("by hand")
    figures.adapter = await _adapter(url, n)
    took("adapter")
    figures.service, figures.service_published = await _service(url, n)
    took("service")
    return figures


def through_nats(
    events: Sequence[TelemetryEvent],
    payloads: Sequence[bytes],
    cores: list[int],
    chart_rate: float,
    loop: eventloop.LoopName = "asyncio",
) -> None:
    n = len(events)
    client_core, server_cores = cores[0], (cores[1:] or cores[:1])
    print(
        f"\n== (b) through NATS: {n:,} events on the telemetry stream (JetStream, file storage),"
        f" {loop} event loop"
    )
    print(f"   client (this Python process) on core {client_core}; nats-server on cores {server_cores}")
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-") as tmp:
        # The server inherits the affinity in force when it starts.
        os.sched_setaffinity(0, server_cores)
        server = EmbeddedNats(Path(tmp) / "nats", free_port())
        url = server.start()
        os.sched_setaffinity(0, {client_core})
        try:
            f = eventloop.run(_through_nats(url, events, payloads), loop)
        finally:
            server.stop()
    raw = f.raw_fetch
    line("JetStream publish_async (to fill the stream)", fmt_rate(f.publish))
    line("baseline: raw nats-py consume, fetch() + ack each", fmt_rate(raw), "no work")
    line(
        "raw by hand: pull request + callback, AckAll/batch",
        fmt_rate(f.raw_by_hand),
        f"= {f.raw_by_hand / raw:.2f} x raw (ceiling, no work)",
    )
    line(
        "consumer adapter (DurableConsumer), no-op handler",
        fmt_rate(f.adapter),
        f"= {f.adapter / raw:.2f} x raw",
    )
    line(
        "SPC service: consume -> chart -> publish -> ack",
        fmt_rate(f.service),
        f"= {f.service / raw:.2f} x raw (service/raw)",
    )
    line("  the same, against the chart code alone (a)", f"{f.service / chart_rate:16.2f}", "x chart alone")
    line("violation events the service published", f"{f.service_published:>16,}")
    cpu = f.cpu_us
    print(
        "   CPU of this process per event (includes the service's start: leases, KV reads):"
        f" raw {cpu['raw']:.0f} µs, by hand {cpu['by hand']:.0f} µs, adapter {cpu['adapter']:.0f} µs,"
        f" service {cpu['service']:.0f} µs"
    )
    line(
        "SPC service, events per CPU second against raw",
        f"{cpu['raw'] / cpu['service']:16.2f}",
        "x raw (less sensitive to a shared machine than the rates)",
    )


# --------------------------------------------------------------------------------------------
# (c) statistics of the default configuration


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def statistics(quick: bool) -> None:
    charts, probes = (150, 2000) if quick else (1000, 6000)
    det_charts = 100 if quick else 600
    page_charts, page_horizon = (60, 1500) if quick else (300, 4000)
    print(
        "\n== (c) default configuration, critical signals, each chart's model estimated from its own baseline"
    )
    print(
        f"   baseline {DEFAULT_BASELINE_N} points; {charts:,} charts x {probes:,} probes per case"
        + ("  [--quick: rough figures]" if quick else "")
    )
    print(
        "   sigma = marginal sd of log latency of the in-control body; outliers: isolated 3-5x slower answers"
    )
    print("   one paging chart per probe (total latency); TTFT and tokens/s charts signal at warning")
    plain = msgspec.structs.replace(default_config("latency_ms"), serial=False, stability=False)
    for i, process in enumerate(performance.PROCESSES):
        fa = performance.false_alarms(
            np.random.default_rng(100 + i), process, charts=charts, probes_per_chart=probes
        )
        rules = ", ".join(f"{k} {v}" for k, v in fa.by_rule.items() if v)
        line(
            f"false alarms /100k, {process.name}",
            f"{fa.per_100k:10.2f}",
            f"target <= {fa.target:g}  {verdict(fa.per_100k <= fa.target)}  ({fa.signals} in {fa.probes:,}"
            + (f": {rules}" if rules else "")
            + (f"; {fa.refused} baselines refused as unstable" if fa.refused else "")
            + ")",
        )
        if process.phi >= 0.3:
            # The same data judged as if points were independent: the baseline of this comparison.
            fb = performance.false_alarms(
                np.random.default_rng(100 + i), process, charts=charts, probes_per_chart=probes, config=plain
            )
            ratio = fb.per_100k / fa.per_100k if fa.per_100k else math.inf
            line(
                "  same data, serial dependence ignored",
                f"{fb.per_100k:10.2f}",
                f"{ratio:.1f}x the fitted model's rate (same run, same seeds)",
            )
    for i, process in enumerate(performance.WANDER_PROCESSES):
        # A level that keeps moving fails the stability test again and again: after max_refusals
        # refusals in a row the chart arms anyway. Compared with the charts whose baseline passed.
        fa = performance.false_alarms(
            np.random.default_rng(150 + i), process, charts=charts, probes_per_chart=probes
        )
        rest = fa.charts - fa.forced_charts
        if fa.forced_charts and rest and fa.signals > fa.forced_signals:
            passed = 100_000 * (fa.signals - fa.forced_signals) / (rest * probes)
            forced = 100_000 * fa.forced_signals / (fa.forced_charts * probes)
            compare = f": {forced:.2f} /100k against {passed:.2f} for the others, ratio {forced / passed:.2f}"
        else:
            compare = ""
        line(
            f"false alarms /100k, {process.name}",
            f"{fa.per_100k:10.2f}",
            "no target (the level really moves: real slow changes)"
            f"  ({fa.signals} in {fa.probes:,}; {fa.refused} baselines refused; {fa.forced_charts} charts"
            f" armed after {default_config('latency_ms').max_refusals} refusals in a row{compare})",
        )
    # The issue's detection targets are in sigma units: they measure the detectors' power, so
    # they run without the practical floor (min_change), which by default keeps any shift below
    # 1.5x (a 1 sigma shift is 1.22x at sigma_log 0.2) from paging.
    detectors = msgspec.structs.replace(default_config("latency_ms"), min_change=0.0, min_spike_change=0.0)
    print(
        "   detection below: the detectors alone (min_change 0); by default a page also needs the"
        f" level {1 + DEFAULT_MIN_CHANGE:g}x the baseline (one answer {1 + DEFAULT_MIN_SPIKE_CHANGE:g}x)"
    )
    for i, process in enumerate(p for p in performance.PROCESSES if p.name in DETECTION_CASES):
        medians = performance.detection_medians(
            np.random.default_rng(200 + i), process, charts=det_charts, config=detectors
        )
        for shift, got in medians.items():
            bound = (
                performance.DETECTION_TARGETS.get(shift, {}).get(process.phi)
                if not process.outliers
                else None
            )
            line(
                f"median delay, {shift:g} sigma slower (detectors alone), {process.name}",
                f"{got:10.1f}",
                (f"target <= {bound}  {verdict(got <= bound)}" if bound is not None else "no target")
                + f"  (probes, {det_charts:,} charts)",
            )
    for i, process in enumerate(p for p in performance.PROCESSES if p.name in DETECTION_CASES):
        # What pages by default: shifts as factors of the latency, whatever its sigma.
        factors = (2.0, 3.0)
        medians = performance.detection_medians(
            np.random.default_rng(250 + i),
            process,
            shifts=tuple(math.log(f) / process.sigma_log for f in factors),
            charts=det_charts,
        )
        for factor, got in zip(factors, medians.values(), strict=True):
            line(
                f"median delay, default config, {factor:g}x slower, {process.name}",
                f"{got:10.1f}",
                f"({math.log(factor) / process.sigma_log:.2f} sigma; probes, {det_charts:,} charts)",
            )
    for i, process in enumerate(p for p in performance.PROCESSES if p.name in PAGE_CASES):
        for shift in (0.25, 0.5, 1.0, 2.0, 5.0):
            mean, found = performance.pages_per_shift(
                np.random.default_rng(300 + i),
                process,
                shift,
                charts=page_charts,
                horizon=page_horizon,
                config=detectors,
            )
            target = performance.PAGES_PER_SHIFT_TARGET
            line(
                f"critical episodes per {shift:g} sigma shift (detectors alone), {process.name}",
                f"{mean:10.3f}",
                f"target <= {target:g}  {verdict(mean <= target)}  (found by {found:.0%} of"
                f" {page_charts} charts within {page_horizon:,} probes)",
            )
    crit, faster = performance.critical_when_faster(
        np.random.default_rng(400), performance.PROCESSES[4], 1.5, charts=5 if quick else 20
    )
    line(
        "critical signals when latency got 1.5 sigma faster",
        f"{crit:10d}",
        f"target 0  {verdict(crit == 0)}  (streaming charts; {faster} info 'faster' episodes recorded)",
    )


DETECTION_CASES = ("independent, sigma_log 0.2", "AR(1) phi 0.3", "AR(1) phi 0.5", "phi 0.3 + 1% slower")
PAGE_CASES = ("independent, sigma_log 0.2", "phi 0.3 + 1% slower")


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke run, rough figures")
    parser.add_argument(
        "--events", type=int, default=None, help="telemetry events (default 200,000; quick 3,000)"
    )
    parser.add_argument("--stats-only", action="store_true", help="only (c), the detection statistics")
    parser.add_argument("--no-stats", action="store_true", help="only (a) and (b), the throughput")
    parser.add_argument(
        "--loops",
        default="asyncio,uvloop",
        help="event loops section (b) runs on, one after the other (default asyncio,uvloop)",
    )
    args = parser.parse_args(argv)
    n = args.events if args.events is not None else (3_000 if args.quick else 200_000)
    if n < 1:
        parser.error("--events must be at least 1")

    started = time.perf_counter()
    cores = sorted(os.sched_getaffinity(0))
    print_machine(("numpy", "nats-py", "msgspec"), nats_server=True)
    print("event loop   asyncio (not uvloop)")
    print(
        f"run          {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {n:,} events"
        + (", --quick" if args.quick else "")
    )
    if not args.stats_only:
        events = synthetic_telemetry(n)
        payloads = [codec.encode(ev) for ev in events]
        os.sched_setaffinity(0, {cores[0]})
        chart_rate = chart_alone(events, payloads)
        for loop in args.loops.split(","):
            if loop not in ("asyncio", "uvloop"):
                parser.error(f"--loops: unknown loop {loop!r}")
            through_nats(events, payloads, cores, chart_rate, "uvloop" if loop == "uvloop" else "asyncio")
        os.sched_setaffinity(0, set(cores))
    if not args.no_stats:
        statistics(args.quick)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ndone in {time.perf_counter() - started:.0f} s; peak RSS {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
