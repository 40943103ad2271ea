"""Feeds the stack the way probers do, for ``stack_bench.py`` (not run alone).

``publish``: ``--probers`` probers in one process, each with its own NATS connection, its own
:class:`llmscope.prober.outbox.Outbox` and :class:`llmscope.bus.publisher.Publisher` (one
awaited publish per event, ``Nats-Msg-Id`` = event id), publish prober-shaped telemetry (many
targets and models, every field a probe fills, a few failed probes) straight to JetStream at a
fixed rate, open loop: an event is put into its prober's outbox when it is due, as a finished
probe is. Prints ``ready`` once connected, starts on a line from stdin, prints ``done`` once
every outbox is empty and writes ``<id> <time put> <time acked>`` per event to ``--times`` (the
clock is the host's CLOCK_MONOTONIC, the benchmark's ``time.perf_counter``).

``consume``: the ceiling's bare consumer: one durable pull consumer on ``--stream`` read with
nats-py's ``fetch`` and one AckAll per batch, doing nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, PubAck
from prometheus_client import CollectorRegistry

from llmscope.bus.publisher import Publisher
from llmscope.config import eventloop
from llmscope.config.env import Env
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.settings import PUBLISH_LINGER_MS
from llmscope.proto import subjects
from llmscope.proto.base import Event, new_id
from llmscope.proto.telemetry import TelemetryEvent

PROVIDERS = ("ollama", "openai", "anthropic")
PROMPTS = (("simple", 64), ("medium", 256), ("complex", 1024))


def model_names(models: int) -> list[tuple[str, str, str]]:
    """(provider, model, target) of each probed model: 10 targets (hosts), the models spread over them."""
    out = []
    for m in range(models):
        provider = PROVIDERS[m % len(PROVIDERS)]
        out.append((provider, f"probe-{m:05d}:8b", f"gpu-{m % 10:02d}"))
    return out


def probe_events(
    models: Sequence[tuple[str, str, str]], n: int, first: int, seed: int, probers: int = 1
) -> Iterator[TelemetryEvent]:
    """``n`` probes, model after model, in control: noise around each model's own level, 0.5% failed."""
    rng = random.Random(seed)
    for i in range(first, first + n):
        provider, model, target = models[i % len(models)]
        prober = f"bench-{i % len(models) % probers}"
        level = 600.0 + 37.0 * (i % len(models) % 20)
        prompt_id, max_tokens = PROMPTS[0]
        probe = TelemetryEvent(
            id=new_id(),
            ts=datetime.now(UTC),
            provider=provider,  # type: ignore[arg-type]
            model=model,
            target=target,
            host=target,
            prober=prober,
            prompt_id=prompt_id,
            prompt_class=prompt_id,
            prompt_hash="ab" * 32,
            streaming=True,
            max_tokens=max_tokens,
            cpu_percent=rng.uniform(5, 30),
            memory_percent=rng.uniform(30, 60),
            gpu_percent=rng.uniform(0, 100),
            gpu_memory_percent=rng.uniform(40, 90),
        )
        if rng.random() < 0.005:
            yield msgspec.structs.replace(
                probe, status="timeout", error="no answer within 30 s", latency_ms=30_000.0
            )
            continue
        latency = max(50.0, rng.gauss(level, level * 0.05))
        ttft = max(5.0, rng.gauss(level / 6, level / 120))
        eval_count = max(1, int(rng.gauss(60, 3)))
        eval_ms = latency - ttft
        yield msgspec.structs.replace(
            probe,
            http_status=200,
            latency_ms=latency,
            ttft_ms=ttft,
            total_duration_ms=latency - 2.0,
            load_duration_ms=rng.uniform(1, 5),
            prompt_eval_duration_ms=ttft * 0.8,
            eval_duration_ms=eval_ms,
            prompt_eval_count=24,
            eval_count=eval_count,
            tokens_per_s=1000.0 * eval_count / eval_ms,
        )


class TimedPublisher(Publisher):
    """The prober's publisher, noting when JetStream acknowledged each event (the benchmark's
    split of published -> stored: the prober's side, then the stack's)."""

    def __init__(self, js: JetStreamContext, acked: dict[str, float]) -> None:
        super().__init__(js)
        self._acked = acked

    async def publish_many(
        self, events: Sequence[tuple[str, Event]], *, deadline: float | None = None
    ) -> list[PubAck]:
        acks = await super().publish_many(events, deadline=deadline)
        now = time.perf_counter()
        for _, event in events:
            self._acked[event.id] = now
        return acks


async def publish(args: argparse.Namespace) -> None:
    models = model_names(args.models)
    clients = [await nats.connect(args.nats, name=f"bench-prober-{p}") for p in range(args.probers)]
    stop = asyncio.Event()
    outboxes = []
    acked: dict[str, float] = {}
    for nc in clients:
        metrics = ProberMetrics(CollectorRegistry())
        outboxes.append(
            Outbox(
                TimedPublisher(nc.jetstream(), acked),
                metrics,
                maxsize=1_000_000,
                linger=args.linger_ms / 1000,
            )
        )
    # Every event made first (not timed: a probe's own work is the prober's, not the stack's).
    # A model belongs to one prober, as a target belongs to the prober whose config names it.
    order = [
        (k % args.models % args.probers, ev)
        for k, ev in enumerate(probe_events(models, args.events, args.first, args.seed, args.probers))
    ]
    prefix = args.subject_prefix

    def subject_of(ev: TelemetryEvent) -> str:
        if prefix:  # the ceiling's plain stream
            return f"{prefix}.{subjects.encode_token(ev.provider)}.{subjects.encode_token(ev.model)}"
        return subjects.telemetry(ev.provider, ev.model)

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    runs = [asyncio.create_task(o.run(stop)) for o in outboxes]
    put: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, (p, ev) in enumerate(order):
        due = t0 + i / args.rate
        delay = due - loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        put.append((ev.id, time.perf_counter()))
        outboxes[p].put(subject_of(ev), ev)
    while sum(o.published for o in outboxes) < len(order):  # noqa: ASYNC110 (the outbox has no event for it)
        await asyncio.sleep(0.002)
    elapsed = loop.time() - t0
    stop.set()
    await asyncio.gather(*runs)
    Path(args.times).write_text("".join(f"{i} {t!r} {acked.get(i, t)!r}\n" for i, t in put))  # noqa: ASYNC240 (after the timing)
    print(f"done {elapsed!r}", flush=True)
    # The benchmark reads this process's CPU, then ends it; or its end closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for nc in clients:
        await nc.close()


async def consume(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.nats, name="bench-bare-consumer")
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "", durable=args.durable, stream=args.stream, config=ConsumerConfig(ack_policy=AckPolicy.ALL)
    )
    print("ready", flush=True)
    while True:
        try:
            msgs = await sub.fetch(256, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        if msgs:
            await msgs[-1].ack()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=("publish", "consume"))
    parser.add_argument("--nats", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--events", type=int, default=1000, help="events in all")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--probers", type=int, default=1)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--times", default="/dev/null")
    parser.add_argument("--subject-prefix", default="", help="publish here instead of the telemetry subjects")
    parser.add_argument("--stream", default="")
    parser.add_argument("--durable", default="bare")
    parser.add_argument(
        "--linger-ms",
        type=float,
        default=Env().number("LLMSCOPE_PROBER_PUBLISH_LINGER_MS", PUBLISH_LINGER_MS, min=0, max=1000),
        help="the outbox's linger (default: LLMSCOPE_PROBER_PUBLISH_LINGER_MS, as the prober)",
    )
    args = parser.parse_args(argv)
    # As the prober runs: uvloop where installed.
    eventloop.run(publish(args) if args.mode == "publish" else consume(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
