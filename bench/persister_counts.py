"""What the persister's telemetry consumer does per probe event at a steady rate.

Embedded NATS and Postgres; the API's ``Persister`` consuming telemetry in this process (its
own options and event loop: uvloop when installed, as the API under uvicorn); probers in another
process (``probe_feed.py``, as ``stack_bench.py`` feeds the stack) publishing at each rate. Per
event: pull requests sent, request statuses received, ack writes and acks, batches handed to the
handler (each one transaction), statements sent to Postgres (asyncpg's count), CPU of this process,
Postgres and nats-server; and published -> stored split as ``stack_bench.py`` splits it (the
row's NOTIFY at commit, its transaction's start). The counters wrap the bus's functions by
name, so the same script measures an older checkout of the code. ``--stages``: each event's time
split stage by stage, with the event loop's lag, GC pauses, the run queue and the WAL's fsyncs
(``persister_stages.py``).

Usage: ``python bench/persister_counts.py [--rates 100,1000] [--seconds 10] [--models 200] [--stages]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import nats

from llmscope.api import persister
from llmscope.api.db import create_pool
from llmscope.bus import inbox
from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.config import eventloop
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.one_at_a_time import run_alone

# The other benchmarks' helpers (the probers' feed, the NOTIFY of stored rows, CPU readers).
sys.path.insert(0, str(Path(__file__).parent))
stack_bench: Any = importlib.import_module("stack_bench")
ingest_bench: Any = importlib.import_module("ingest_bench")
persister_stages: Any = importlib.import_module("persister_stages")

PULL = "$JS.API.CONSUMER.MSG.NEXT."


def count_bus(counts: Counter[str]) -> None:
    """Count the bus traffic of this process by wrapping the functions it goes through."""
    status_of, ack_many = inbox.status_of, inbox.ack_many

    def counted_status(msg: Any) -> str:
        status = status_of(msg)
        counts["statuses" if status else "deliveries"] += 1
        return status

    async def counted_acks(nc: Any, msgs: Sequence[Any]) -> None:
        counts["ack writes"] += 1
        counts["acks"] += len(msgs)
        await ack_many(nc, msgs)

    inbox.status_of = counted_status
    inbox.ack_many = counted_acks


def queries(pool: asyncpg.Pool) -> int:
    """Statements the pool's connections sent so far (a release's reset included): asyncpg's
    own count per connection, each a round trip to Postgres."""
    total = 0
    holders: list[Any] = pool._holders  # type: ignore[attr-defined]
    for holder in holders:
        conn = holder._con
        if conn is not None:
            total += conn._protocol.queries_count
    return total


async def measure(
    nats_url: str,
    dsn: str,
    tmp: Path,
    rates: Sequence[int],
    seconds: float,
    models: int,
    pg_statements: bool = False,
    stages_on: bool = False,
) -> None:
    print(f"event loop {type(asyncio.get_running_loop()).__module__}")
    counts: Counter[str] = Counter()
    count_bus(counts)
    nc = await nats.connect(nats_url)
    publish = nc.publish

    async def counted_publish(
        subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
    ) -> None:
        if subject.startswith(PULL):
            counts["pull requests"] += 1
        await publish(subject, payload, reply=reply, headers=headers)

    nc.publish = counted_publish  # type: ignore[method-assign]
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    pool = await create_pool(dsn, min_size=2, max_size=4)
    listen = await asyncpg.connect(dsn)
    await listen.execute(stack_bench.NOTIFY_SQL)
    stored = stack_bench.Stored()
    await listen.add_listener("bench_stored", stored.on_notify)
    p = persister.Persister(pool=pool, js=js, publisher=Publisher(js))
    handler = p.telemetry._handler

    async def counting(batch: Any) -> Any:
        counts["batches"] += 1
        return await handler(batch)

    p.telemetry._handler = counting
    stages = persister_stages.Stages() if stages_on else None
    wal = persister_stages.Wal(dsn) if stages_on else None
    if stages is not None:
        stages.install(p)
        stages.start_samplers()
    stop = asyncio.Event()
    task = asyncio.create_task(p.telemetry.run(stop))
    pg_pid = int((tmp / "pg" / "postmaster.pid").read_text().split()[0])
    cpu = {
        "persister": ingest_bench.process_cpu(os.getpid()),
        "postgres": ingest_bench.process_cpu(pg_pid, tree=True),
    }
    first = 0
    try:
        for rate in rates:
            n = int(rate * seconds)
            feed = await stack_bench.Feed.start(
                [
                    "--nats", nats_url, "--rate", str(rate), "--events", str(n), "--models", str(models),
                    "--probers", str(stack_bench.probers_for(rate)), "--first", str(first),
                ],
                tmp / f"feed-{rate}.times",
            )  # fmt: skip
            first += n
            await asyncio.sleep(0.5)  # the idle consumer's state before the feed starts
            if pg_statements:
                await stack_bench.Statements.reset(dsn)
            counts.clear()
            if stages is not None and wal is not None:
                stages.reset()
                await wal.mark()
            clock0 = await stack_bench.ClockOffset.measure(listen)
            c0 = {name: read() for name, read in cpu.items()}
            q0 = queries(pool)
            elapsed = await feed.go()
            put, acked = feed.put_times()
            stored.expect(list(put))
            await stored.wait()
            c1 = {name: read() for name, read in cpu.items()}
            clock = clock0.spanning(await stack_bench.ClockOffset.measure(listen))
            # Each row's write time, from its transaction's start to its commit timestamp.
            await stored.read_commits(listen, list(put), clock)
            statements = queries(pool) - q0
            seen = dict(counts)
            if pg_statements:
                await stack_bench.Statements.report(dsn, n)
            await feed.stop()
            print(
                f"\n== {n:,} probe events at {rate:,}/s asked, {n / elapsed:,.0f}/s published,"
                f" {models} models"
            )
            for name in ("pull requests", "statuses", "ack writes", "acks", "batches"):
                print(f"  {name + ' per event':<28} {seen.get(name, 0) / n:7.3f}")
            print(
                f"  {'Postgres statements per event':<28} {statements / n:7.3f}"
                "  (round trips: BEGIN, COMMIT, resets)"
            )
            for name in cpu:
                used = ingest_bench.cpu_between(c0[name], c1[name])
                print(f"  CPU ms per event, {name:<10} {1000 * used / n:7.3f}")
            ids = [i for i in put if i in stored.at and i in stored.writing]
            total = [1000 * (stored.at[i] - put[i]) for i in ids]
            wait = [1000 * (stored.at[i] - acked[i] - stored.writing[i]) for i in ids]
            write = [1000 * stored.writing[i] for i in ids]
            for label, values in (
                ("published -> stored", total),
                ("acked -> transaction start", wait),
                ("transaction start -> stored", write),
            ):
                pct = " / ".join(f"{stack_bench.percentile(values, q):.1f}" for q in (50, 95, 99))
                print(f"  {label + ' ms p50/p95/p99':<40} {pct}")
            if stages is not None and wal is not None:
                committed = await stages.commit_times(dsn, list(put))
                stages.report(put, acked, stored.at, stack_bench.percentile, committed)
                await wal.report(n, len(stages.stores))
    finally:
        stop.set()
        if stages is not None:
            await stages.stop()
        await asyncio.wait_for(task, 10)
        await listen.close()
        await pool.close()
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument(
        "--statements", action="store_true", help="print pg_stat_statements per event for each rate"
    )
    parser.add_argument(
        "--stages", action="store_true", help="split each event's time by stage (persister_stages.py)"
    )
    args = parser.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    persister.tune_gc()
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-counts-") as name:
        tmp = Path(name)
        server = EmbeddedNats(tmp / "nats", free_port())
        url = server.start()
        settings = (
            stack_bench.COMMIT_TIMESTAMPS
            | (stack_bench.Statements.SETTINGS if args.statements else {})
            | (persister_stages.Wal.SETTINGS if args.stages else {})
        )
        pg = EmbeddedPostgres(tmp / "pg", free_port(), settings=settings)
        pg.start()
        try:
            dsn = pg.create_database("llmscope")
            rates = [int(r) for r in args.rates.split(",")]
            eventloop.run(
                measure(url, dsn, tmp, rates, args.seconds, args.models, args.statements, args.stages)
            )
        finally:
            pg.stop()
            server.stop()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_alone(main, __file__)
