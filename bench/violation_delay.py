"""How long the SPC engine takes from a probe event stored to its violation published.

Not a test: it prints figures. For each ``LLMSCOPE_SPC_GATHER_MS`` given, a fresh embedded
nats-server and the engine (in this process, as ``serve`` runs it; 16 partitions), charts armed
on a quiet baseline, then probe events published at a steady rate over many models, one in
fifteen of them, at random, 4x slower (a spike: a violation opens, and clears ten points later).
Each violation is timed from the JetStream ack of the telemetry event that completed its pattern
(``point_ids[-1]``; stored by then) to its arrival on a core subscription to the violation
subjects (published, and so acked, by the engine by then).

Usage: ``python bench/violation_delay.py [--gather-ms 0,250] [--rate 100] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
from pathlib import Path

import nats
from nats.aio.msg import Msg

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.settings import SpcSettings
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.one_at_a_time import run_alone  # noqa: E402
from tests.spc_engine.helpers import probe  # noqa: E402  (the engine tests' probe events)

BASELINE = 40
PARTITIONS = 16


def event(i: int, model: str, spike: bool) -> TelemetryEvent:
    prompt = ("simple", "medium")[i % 2]
    latency = (300.0 if prompt == "simple" else 1200.0) * (1.0 + 0.05 * ((i * 7919) % 13 - 6) / 6)
    return probe(i, f"{model}-{i}", model, prompt, latency * (4.0 if spike else 1.0), 50.0)


async def drained(js: nats.js.JetStreamContext) -> bool:
    for partition in range(PARTITIONS):
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, partition_durable(partition))
        except nats.js.errors.NotFoundError:
            return False
        if info.num_pending:
            return False
    return True


async def one(gather_ms: int, rate: float, seconds: float, models: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", free_port(), tie_to_parent=True)
        server.start()
        try:
            return await measure(server.url, gather_ms, rate, seconds, models)
        finally:
            server.stop()


async def measure(url: str, gather_ms: int, rate: float, seconds: float, models: int) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    settings = SpcSettings(
        bus=BusSettings(nats_url=url), baseline_n=BASELINE, partitions=PARTITIONS, gather_ms=gather_ms
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    names = [f"m{k}" for k in range(models)]
    loop = asyncio.get_running_loop()
    stored: dict[str, float] = {}
    delays: list[float] = []

    async def seen(msg: Msg) -> None:
        now = loop.time()
        violation = codec.decode_as(msg.data, ViolationEvent)
        at = stored.get(violation.point_ids[-1]) if violation.point_ids else None
        if at is not None:
            delays.append(now - at)

    try:
        baseline = [event(i, m, False) for i in range(2 * BASELINE + 4) for m in names]
        acks = [
            await js.publish_async(subjects.telemetry(e.provider, e.model), codec.encode(e)) for e in baseline
        ]
        await asyncio.gather(*acks)
        for _ in range(600):  # the baseline charted (2 minutes at most)
            if await drained(js):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        sub = await nc.subscribe(subjects.VIOLATIONS_ALL, cb=seen)
        start = loop.time()
        n = int(rate * seconds)
        spikes = random.Random(0)
        for k in range(n):
            i, model = 2 * BASELINE + 4 + k // models, names[k % models]
            ev = event(i, model, spike=spikes.random() < 1 / 15)  # at any moment of a tick
            await asyncio.sleep(max(0.0, start + k / rate - loop.time()))
            await js.publish(subjects.telemetry(ev.provider, ev.model), codec.encode(ev))
            stored[ev.id] = loop.time()
        await asyncio.sleep(2 * gather_ms / 1000 + 1.0)
        await sub.unsubscribe()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await nc.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gather-ms", default="0,250", help="LLMSCOPE_SPC_GATHER_MS values, comma-separated")
    parser.add_argument("--rate", type=float, default=100.0, help="probe events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--models", type=int, default=20)
    args = parser.parse_args()
    for gather_ms in [int(g) for g in args.gather_ms.split(",")]:
        delays = sorted(asyncio.run(one(gather_ms, args.rate, args.seconds, args.models)))
        if not delays:
            print(f"gather {gather_ms} ms: no violations seen")
            continue
        q = statistics.quantiles(delays, n=100) if len(delays) > 1 else [delays[0]] * 99
        print(
            f"gather {gather_ms:4d} ms: stored -> violation published ms, p50 / p95 / max"
            f"  {q[49] * 1000:.0f} / {q[94] * 1000:.0f} / {delays[-1] * 1000:.0f}  ({len(delays)} violations,"
            f" {args.rate:g} events/s)"
        )


if __name__ == "__main__":
    run_alone(main, __file__)
