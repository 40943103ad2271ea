"""Ingest benchmark: the API's front door, batched publishing, the persister's writes, batched acks.

Not a test: it prints figures. Every rate is printed next to a baseline measured in the same run
(the way it was done before issue 13, or the library's ceiling), and the ratio is the figure to
compare; the machine is printed first. Real components: an embedded nats-server (JetStream, file
storage) and an embedded PostgreSQL (fsync on).

(a) the bearer check as a FastAPI dependency: ``async def`` against a plain ``def`` (which FastAPI
    runs in its thread pool), one POST per request, in process (httpx ASGI transport).
(b) a 1000-event ``POST /api/stats`` list's publishing: ``Publisher.publish_many`` (pipelined,
    acks awaited together) against ``Publisher.publish`` per event (the old path), and bare
    ``publish_async`` (nats-py's own pipelining, which ``Publisher`` no longer uses: it collects
    the acks on an inbox of its own, cheaper per message).
(c) the persister's ``store_telemetry``: one-event batches as one statement of array parameters
    against the large batches' path (COPY, then the aggregates' statement), which is why small
    batches take the other; 500-event batches against a bare ``copy_records_to_table`` into the
    same table and indexes (the ceiling).
(d) the consumer adapter with a no-op handler: one AckAll per batch against an ack per message.
(e) the persister draining a backlog: the API's ``Persister`` (its telemetry consumer with its
    default options: batches of ``persister.PERSIST_BATCH`` events, the next batch pulled while
    one is written, each message acked after its batch's COMMIT) takes N events from JetStream
    into Postgres; the ceiling is the same number of events written with bare
    ``copy_records_to_table`` in transactions of as many rows into the same table and indexes,
    the garbage collector set as the persister's process sets it (``persister.tune_gc``); since
    the persister stores ``persister.TELEMETRY_CONCURRENT`` batches at once, each on its own
    connection, bare COPY on as many connections at once is printed beside it too.
    Rounds alternate copy and drain, and asyncio's event loop and uvloop's (each round a fresh
    loop), so both ratios come from interleaved measurements: drain / COPY on each loop, and
    uvloop / asyncio for each.

Usage: ``python bench/ingest_bench.py [--quick] [--only e]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
from fastapi import Depends, FastAPI, HTTPException, Request
from nats.js import JetStreamContext

from llmscope.api import persister
from llmscope.api.auth import KeyAuth
from llmscope.api.db import create_pool
from llmscope.api.ratelimit import FailureLimiter
from llmscope.api.sessions import RevokedSessions
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.config import eventloop
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.one_at_a_time import run_alone

T0 = datetime(2025, 1, 1, tzinfo=UTC)
KEY = "bench-key-0123456789abcdef"


def line(label: str, value: float, baseline: float | None = None, note: str = "") -> None:
    ratio = f"= {value / baseline:5.2f} x baseline" if baseline else "baseline"
    print(f"{label:<58} {value:>10,.0f} /s  {ratio}  {note}".rstrip())


def events(n: int, models: int = 100, seed: int = 1) -> list[TelemetryEvent]:
    rng = random.Random(seed)
    return [
        TelemetryEvent(
            id=f"e{seed}-{i:08d}",
            ts=T0 + timedelta(milliseconds=20 * i),
            provider="ollama",
            model=f"model-{i % models}",
            target="local",
            host="gpu-1",
            prompt_id="simple",
            prompt_hash="ab" * 32,
            latency_ms=rng.lognormvariate(5.7, 0.3),
            ttft_ms=rng.lognormvariate(4.0, 0.3),
            tokens_per_s=rng.gauss(50, 5),
            eval_count=64,
            cpu_percent=12.5,
        )
        for i in range(n)
    ]


async def timed(n: int, work: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await work()
    return n / (time.perf_counter() - t0)


# -- (a) ------------------------------------------------------------------------------------


async def auth_dependency(n: int) -> None:
    print("\n== (a) bearer check as a dependency, POST with a 400-byte body, in process")
    # Bearer keys only: the session list (Postgres) is never consulted on this path.
    auth = KeyAuth(
        {"admin": Secret(KEY)}, revoked=RevokedSessions(lambda: None), limiter=FailureLimiter(10, 60)
    )

    def sync_require(request: Request) -> None:  # the dependency before issue 13, in a thread
        _, _, token = request.headers.get("authorization", "").partition(" ")
        if auth.key_scope(token, "bench") is None:
            raise HTTPException(401)

    headers = {"Authorization": f"Bearer {KEY}"}
    body = b'{"provider":"ollama","model":"m","prompt_id":"p"}' * 8
    rates: dict[str, float] = {"def": 0.0, "async def": 0.0}
    # Interleaved rounds, best of each: the machine is shared and noisy.
    for name, dep in [("def", sync_require), ("async def", auth.require)] * 3:
        app = FastAPI()

        @app.post("/api/stats", status_code=202, dependencies=[Depends(dep)])
        async def post(request: Request) -> dict[str, str]:
            await request.body()
            return {"id": "x"}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def run(client: httpx.AsyncClient = client) -> None:
                for _ in range(n):
                    r = await client.post("/api/stats", content=body, headers=headers)
                    assert r.status_code == 202

            await run()  # warm-up
            rates[name] = max(rates[name], await timed(n, run))
    line("auth as a plain def (thread pool), requests", rates["def"])
    line("auth as async def (issue 13), requests", rates["async def"], rates["def"])


# -- (b) and (d) ----------------------------------------------------------------------------


async def publishing(js: JetStreamContext, n: int) -> None:
    print("\n== (b) publishing a POST of 1000 events (JetStream, file storage)")
    pub = Publisher(js)
    batches = [events(1000, seed=s) for s in range(3 * n // 1000)]
    one, many, ceiling = batches[0::3], batches[1::3], batches[2::3]

    async def serial() -> None:
        for batch in one:
            for ev in batch:
                await pub.publish(subjects.telemetry(ev.provider, ev.model), ev)

    async def pipelined() -> None:
        for batch in many:
            await pub.publish_many([(subjects.telemetry(ev.provider, ev.model), ev) for ev in batch])

    async def bare() -> None:
        for batch in ceiling:
            futures = [
                await js.publish_async(
                    subjects.telemetry(ev.provider, ev.model),
                    codec.encode(ev),
                    headers={"Nats-Msg-Id": ev.id},
                )
                for ev in batch
            ]
            await asyncio.gather(*futures)

    base = await timed(len(one) * 1000, serial)
    line("Publisher.publish per event, ack awaited each (before)", base)
    line("Publisher.publish_many (issue 13)", await timed(len(many) * 1000, pipelined), base)
    line("bare js.publish_async + gather (nats-py's own)", await timed(len(ceiling) * 1000, bare), base)


async def _consume_once(js: JetStreamContext, durable: str, n: int, ack_all: bool) -> float:
    done = asyncio.Event()
    seen = 0

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal seen
        seen += len(batch)
        if seen >= n:
            done.set()

    consumer = DurableConsumer[TelemetryEvent](
        js=js,
        stream=subjects.STREAM_TELEMETRY,
        durable=durable,
        filter_subjects=[subjects.TELEMETRY_ALL],
        decode=lambda b: codec.decode_as(b, TelemetryEvent),
        handler=handler,
        dead_letters=DeadLetters(Publisher(js), "bench"),
        options=ConsumerOptions(batch_size=256, fetch_timeout=0.5, ack_all=ack_all),
    )
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(consumer.run(stop))
    await done.wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    return n / elapsed


async def consuming(js: JetStreamContext, n: int) -> None:
    print(f"\n== (d) consumer adapter, no-op handler, {n:,} stored events, batches of 256")
    rates: dict[bool, float] = {False: 0.0, True: 0.0}
    # Interleaved rounds on fresh durables, best of each: the machine is shared and noisy.
    for round_, ack_all in enumerate([False, True] * 3):
        rates[ack_all] = max(rates[ack_all], await _consume_once(js, f"bench-{round_}", n, ack_all))
    line("ack per message (persister; SPC engine before)", rates[False])
    line("AckAll per batch (SPC engine, issue 13)", rates[True], rates[False])


async def through_nats(n_publish: int, n_consume: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", free_port())
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js, BusSettings())
            await publishing(js, n_publish)
            await js.purge_stream(subjects.STREAM_TELEMETRY)
            stored = events(n_consume, seed=99)
            for start in range(0, n_consume, 1000):
                chunk = stored[start : start + 1000]
                await Publisher(js).publish_many(
                    [(subjects.telemetry(e.provider, e.model), e) for e in chunk]
                )
            await consuming(js, n_consume)
            await nc.close()
        finally:
            server.stop()


# -- (c) ------------------------------------------------------------------------------------


async def storing(n_single: int, n_bulk: int) -> None:
    print("\n== (c) persister store_telemetry (PostgreSQL, fsync on, a fresh database)")
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data", free_port())
        server.start()
        try:
            pool = await create_pool(server.url(), min_size=1, max_size=2)
            try:
                await _storing(pool, n_single, n_bulk)
            finally:
                await pool.close()
        finally:
            server.stop()


async def _storing(pool: asyncpg.Pool, n_single: int, n_bulk: int) -> None:
    singles = events(2 * n_single, seed=7)

    async def one_by_one(batch: Sequence[TelemetryEvent], copy_min_rows: int) -> None:
        async with pool.acquire() as conn:
            for ev in batch:
                await persister.store_telemetry(conn, [ev], copy_min_rows=copy_min_rows)

    # Passed per call: the function's default was bound when it was defined, so setting the
    # module's COPY_MIN_ROWS (as this bench once did) changed nothing.
    base = await timed(n_single, lambda: one_by_one(singles[:n_single], 1))
    line("1-event batches, the large batches' path (COPY + aggregates)", base)
    line(
        "1-event batches, the one-event statement (the persister's path)",
        await timed(n_single, lambda: one_by_one(singles[n_single:], persister.COPY_MIN_ROWS)),
        base,
    )

    bulk = [events(500, seed=1000 + s) for s in range(2 * n_bulk // 500)]

    async def ceiling(batches: Sequence[Sequence[TelemetryEvent]]) -> None:
        async with pool.acquire() as conn:
            for batch in batches:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "telemetry",
                        records=[persister.telemetry_record(ev) for ev in batch],
                        columns=persister.TELEMETRY_COLUMNS,
                    )

    async def stored(batches: Sequence[Sequence[TelemetryEvent]]) -> None:
        async with pool.acquire() as conn:
            for batch in batches:
                await persister.store_telemetry(conn, batch)

    half = len(bulk) // 2
    top = await timed(half * 500, lambda: ceiling(bulk[:half]))
    line("500-event batches, bare copy_records_to_table (ceiling)", top)
    line(
        "500-event batches, store_telemetry (rollups, series)",
        await timed(half * 500, lambda: stored(bulk[half:])),
        top,
    )


# -- (e) ------------------------------------------------------------------------------------


Cpu = Callable[[], dict[int, float]]


def process_cpu(pid: int, tree: bool = False) -> Cpu:
    """CPU seconds of a process (and its children: Postgres's backends), by pid."""

    def read() -> dict[int, float]:
        if pid == os.getpid() and not tree:
            # This process's own clock, not /proc's 10 ms ticks (0.5 µs per event over 20,000).
            return {pid: time.process_time()}
        out: dict[int, float] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for p in [root, *(root.children(recursive=True) if tree else [])]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
        return out

    return read


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


@dataclass
class Round:
    copy_rate: float
    copy2_rate: float
    """Bare COPY on as many connections at once as the persister stores telemetry batches."""
    consume_rate: float
    """The persister's consumer (same options) with a handler that stores nothing."""
    drain_rate: float
    copy_cpu: dict[str, float]
    """CPU per event, µs, of each process: this one (the client), Postgres, nats-server."""
    drain_cpu: dict[str, float]

    @property
    def copy_cpu_us(self) -> float:
        return sum(self.copy_cpu.values())

    @property
    def drain_cpu_us(self) -> float:
        return sum(self.drain_cpu.values())


Cpus = dict[str, Cpu]


def snapshot(parts: Cpus) -> dict[str, dict[int, float]]:
    return {name: read() for name, read in parts.items()}


def per_event(before: dict[str, dict[int, float]], parts: Cpus, n: int) -> dict[str, float]:
    after = snapshot(parts)
    return {name: 1e6 * cpu_between(before[name], after[name]) / n for name in parts}


async def _consume_backlog(js: JetStreamContext, n: int, durable: str) -> float:
    """The persister's consumer options, a handler that does nothing: the NATS client's share."""
    seen = 0
    done = asyncio.Event()

    async def nothing(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal seen
        seen += len(batch)
        if seen >= n:
            done.set()

    consumer = DurableConsumer[TelemetryEvent](
        js=js,
        stream=subjects.STREAM_TELEMETRY,
        durable=durable,
        filter_subjects=[subjects.TELEMETRY_ALL],
        decode=lambda b: codec.decode_as(b, TelemetryEvent),
        handler=nothing,
        dead_letters=DeadLetters(Publisher(js), "bench"),
        options=persister.persister_consumer_options(),
    )
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(done.wait(), 600)
    rate = n / (time.perf_counter() - t0)
    stop.set()
    await task
    return rate


async def _drain_round(nats_url: str, dsn: str, n: int, seed: int, cpu: Cpus) -> Round:
    """One round on the running loop: bare COPY of n events, then the persister draining n others."""
    nc = await nats.connect(nats_url)
    pool = await create_pool(dsn, min_size=2, max_size=4)
    try:
        js = nc.jetstream()
        await js.purge_stream(subjects.STREAM_TELEMETRY)
        backlog = events(n, seed=seed)
        publisher = Publisher(js)
        for start in range(0, n, 1000):
            await publisher.publish_many(
                [(subjects.telemetry(e.provider, e.model), e) for e in backlog[start : start + 1000]]
            )
        copied = events(n, seed=seed + 1)
        size = persister.PERSIST_BATCH  # the persister's transactions, as large as its batches

        async def bare_copy() -> None:
            async with pool.acquire() as conn:
                for start in range(0, n, size):
                    async with conn.transaction():
                        await conn.copy_records_to_table(
                            "telemetry",
                            records=[persister.telemetry_record(e) for e in copied[start : start + size]],
                            columns=persister.TELEMETRY_COLUMNS,
                        )

        c0 = snapshot(cpu)
        copy_rate = await timed(n, bare_copy)
        copy_cpu = per_event(c0, cpu, n)

        at_once = persister.TELEMETRY_CONCURRENT
        copied2 = events(n, seed=seed + 50_000)

        async def bare_copy_at_once() -> None:
            async def part(rows: Sequence[TelemetryEvent]) -> None:
                async with pool.acquire() as conn:
                    for start in range(0, len(rows), size):
                        async with conn.transaction():
                            await conn.copy_records_to_table(
                                "telemetry",
                                records=[persister.telemetry_record(e) for e in rows[start : start + size]],
                                columns=persister.TELEMETRY_COLUMNS,
                            )

            await asyncio.gather(*(part(copied2[i::at_once]) for i in range(at_once)))

        copy2_rate = await timed(n, bare_copy_at_once)

        consume_rate = await _consume_backlog(js, n, f"bench-noop-{seed}")

        p = persister.Persister(pool=pool, js=js, publisher=publisher, durable_prefix=f"bench-{seed}")
        stored = 0
        done = asyncio.Event()
        on_telemetry = p.on_telemetry

        async def counting(batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str]:
            nonlocal stored
            rejected = await on_telemetry(batch)
            stored += len(batch)  # committed; the consumer acks them as this returns
            if stored >= n:
                done.set()
            return rejected

        p.telemetry._handler = counting
        stop = asyncio.Event()
        c0 = snapshot(cpu)
        t0 = time.perf_counter()
        task = asyncio.create_task(p.telemetry.run(stop))
        await asyncio.wait_for(done.wait(), 600)
        drain_rate = n / (time.perf_counter() - t0)
        drain_cpu = per_event(c0, cpu, n)
        stop.set()
        await task
        return Round(copy_rate, copy2_rate, consume_rate, drain_rate, copy_cpu, drain_cpu)
    finally:
        await pool.close()
        await nc.close()


def draining(n: int, rounds: int, loops: Sequence[eventloop.LoopName]) -> None:
    print(
        f"\n== (e) persister draining {n:,} stored events into Postgres (fsync on), {rounds} rounds per"
        " loop; CPU is this process + Postgres + nats-server"
    )
    results: dict[str, list[Round]] = {loop: [] for loop in loops}
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-drain-") as tmp:
        nats_server = EmbeddedNats(Path(tmp) / "nats", free_port())
        nats_url = nats_server.start()
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        pg.start()
        try:
            assert nats_server._proc is not None
            cpu: Cpus = {
                "client": process_cpu(os.getpid()),
                "postgres": process_cpu(
                    int((pg.data_dir / "postmaster.pid").read_text().split()[0]), tree=True
                ),
                "nats-server": process_cpu(nats_server._proc.pid),
            }

            async def setup() -> None:
                nc = await nats.connect(nats_url)
                await ensure_streams(nc.jetstream(), BusSettings())
                await nc.close()

            asyncio.run(setup())
            persister.tune_gc()  # as the process that runs the persister does at start
            seed = 10_000
            for _ in range(rounds):
                for loop in loops:  # interleaved: the machine's load changes under a long run
                    seed += 2
                    results[loop].append(eventloop.run(_drain_round(nats_url, pg.url(), n, seed, cpu), loop))
        finally:
            pg.stop()
            nats_server.stop()
    for loop in loops:
        rs = results[loop]
        top = max(r.copy_rate for r in rs)
        line(f"bare copy_records_to_table, {persister.PERSIST_BATCH}-row transactions ({loop})", top)
        line(f"persister drain: pull, store, ack after COMMIT ({loop})", max(r.drain_rate for r in rs), top)
        top2 = max(r.copy2_rate for r in rs)
        at_once = persister.TELEMETRY_CONCURRENT
        line(f"  bare COPY on {at_once} connections at once, as the persister's batches ({loop})", top2)
        line("  persister drain against it", max(r.drain_rate for r in rs), top2)
        consume = max(r.consume_rate for r in rs)
        line(f"  its consumer alone, storing nothing ({loop})", consume)
        line("  persister drain against its consumer alone", max(r.drain_rate for r in rs), consume)
        c = min(rs, key=lambda r: r.copy_cpu_us)
        d = min(rs, key=lambda r: r.drain_cpu_us)

        def parts(cpu: dict[str, float]) -> str:
            return ", ".join(f"{name} {us:.1f}" for name, us in cpu.items())

        print(
            f"  CPU µs per event, least of {len(rs)}: COPY {c.copy_cpu_us:.0f} ({parts(c.copy_cpu)}),"
            f" persister {d.drain_cpu_us:.0f} ({parts(d.drain_cpu)})"
            f" = {c.copy_cpu_us / d.drain_cpu_us:.2f} x COPY's events per CPU second"
        )
        # Each round's, for the spread (a tenth of a µs is about one clock tick of the process's CPU).
        clients = ", ".join(f"{r.drain_cpu['client']:.1f}" for r in rs)
        ratios = ", ".join(f"{r.drain_rate / r.copy_rate:.2f}" for r in rs)
        print(f"  each round: persister's client CPU µs per event {clients}; drain / COPY {ratios}")
    if len(loops) == 2:
        a, b = loops

        def best(loop: str, f: Callable[[Round], float]) -> float:
            return max(f(r) for r in results[loop])

        drain = best(b, lambda r: r.drain_rate) / best(a, lambda r: r.drain_rate)
        cpu_ratio = min(r.drain_cpu_us for r in results[a]) / min(r.drain_cpu_us for r in results[b])
        copy = best(b, lambda r: r.copy_rate) / best(a, lambda r: r.copy_rate)
        print(
            f"{b} / {a}: persister drain {drain:.2f} x the rate, {cpu_ratio:.2f} x the events per CPU"
            f" second; bare COPY {copy:.2f} x (interleaved rounds)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke run, rough figures")
    parser.add_argument("--only", default="abcde", help="sections to run (default abcde)")
    parser.add_argument(
        "--loops", default="asyncio,uvloop", help="event loops (e) alternates (default asyncio,uvloop)"
    )
    args = parser.parse_args(argv)
    loops: list[eventloop.LoopName] = []
    for loop in args.loops.split(","):
        if loop not in ("asyncio", "uvloop"):
            parser.error(f"--loops: unknown loop {loop!r}")
        loops.append("uvloop" if loop == "uvloop" else "asyncio")
    print_machine(("nats-py", "asyncpg", "msgspec", "fastapi", "uvloop"), nats_server=True)
    print("event loop   asyncio; section (e) alternates asyncio and uvloop")
    quick = args.quick
    if "a" in args.only:
        asyncio.run(auth_dependency(300 if quick else 3000))
    if "b" in args.only or "d" in args.only:
        asyncio.run(through_nats(3000 if quick else 30_000, 20_000 if quick else 100_000))
    if "c" in args.only:
        asyncio.run(storing(100 if quick else 500, 5000 if quick else 50_000))
    if "e" in args.only:
        draining(5000 if quick else 20_000, 1 if quick else 3, loops)
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
