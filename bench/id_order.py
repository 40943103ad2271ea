"""Postgres's cost per event of random event ids (uuid4) and of time-ordered ids (UUIDv7 layout).

Telemetry's primary key is the event's text id. A random id lands on a random leaf of that btree:
once the index outgrows the buffer cache (a large deployment keeps millions of rows a day), each
insert reads a leaf back and, the first time a leaf changes after a checkpoint, writes the whole
page to the WAL (a full-page image). An id that starts with the time appends at the right edge.

Two databases in one cluster with a deliberately small ``--shared-buffers`` (the index does not
fit, as at scale) and the project's migrations; each telemetry table is preloaded with
``--rows`` rows in SQL (``generate_series``; a larger cache meanwhile, then the server restarts
with the small one), the ``random`` arm's ids random, the ``ordered`` arm's time-ordered. Then
``--events`` events per round are stored in batches of ``--batch`` through the persister's real
statement (``store_telemetry``), the arms alternating, each round after a CHECKPOINT (at scale
the events between two checkpoints touch far fewer leaves than the index has, so nearly every
leaf an event touches is its first change since the checkpoint: a round here is that regime).
Printed per event: the writing backend's CPU (``/proc``), the wall time, WAL bytes and full-page
images (``pg_stat_wal``), and the primary key's and the whole table's buffer reads (pages not in
shared buffers: from the OS cache here, from disk on a server whose cache is short of the index).

Usage: ``python bench/id_order.py [--rows 3000000] [--rounds 6] [--events 3000] [--batch 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from llmscope.api import persister
from llmscope.api.db import create_pool, migrate
from llmscope.proto.base import new_id
from llmscope.stack.embedded import EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import load_average, print_machine
from bench.one_at_a_time import run_alone

sys.path.insert(0, str(Path(__file__).parent))
stack_bench: Any = importlib.import_module("stack_bench")
event_cost: Any = importlib.import_module("event_cost")


def random_id() -> str:
    return uuid.uuid4().hex


# ``new_id`` is the project's event id, time-ordered since this benchmark (uuid4 before it).
ARMS: dict[str, Callable[[], str]] = {"random": random_id, "ordered": new_id}

# The preload's ids, in SQL. Random: 32 hex digits from gen_random_uuid. Ordered: the UUIDv7
# layout of a row stored ``n`` ms ago counted back from now (48-bit ms, version 7, 12 bits of
# counter, variant, random), so the preloaded rows sort before the events the rounds store.
PRELOAD_ID = {
    "random": "replace(gen_random_uuid()::text, '-', '')",
    "ordered": (
        "lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint - $1 + g), 12, '0') || '7'"
        " || substr(replace(gen_random_uuid()::text, '-', ''), 14, 19)"
    ),
}

PRELOAD = """
INSERT INTO telemetry (id, ts, provider, model, target, host, prober, prompt_id, prompt_hash,
                       streaming, status, latency_ms, ttft_ms, eval_count, tokens_per_s,
                       cpu_percent, memory_percent)
SELECT {id}, now() - ($1 - g) * interval '1 millisecond', 'ollama',
       'bench-' || lpad((g % $2)::text, 2, '0') || ':8b', 'local', 'gpu-1', 'bench', 'simple',
       repeat('ab', 32), true, 'ok', 400 + g % 40, 80 + g % 8, 64, 50 + g % 7, 12.5, 40
FROM generate_series(1, $1) AS g
"""

# Pages of the primary key, of telemetry and of its indexes read into shared buffers (misses) and
# found there (hits), and the cluster's WAL: the writer flushes its counters first.
STATS = """
SELECT (SELECT idx_blks_read FROM pg_statio_user_indexes WHERE indexrelname = 'telemetry_pkey'),
       (SELECT idx_blks_hit FROM pg_statio_user_indexes WHERE indexrelname = 'telemetry_pkey'),
       (SELECT heap_blks_read + idx_blks_read FROM pg_statio_user_tables WHERE relname = 'telemetry'),
       wal_bytes, wal_fpi
FROM pg_stat_wal
"""

COLUMNS = ("postgres ms", "wall ms", "WAL bytes", "FPI", "pkey reads", "pkey hits", "table reads")


async def preload(dsn: str, arm: str, rows: int, models: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        started = time.perf_counter()
        await conn.execute(PRELOAD.format(id=PRELOAD_ID[arm]), rows, models)
        await conn.execute("VACUUM ANALYZE telemetry")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def sizes(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT pg_relation_size('telemetry_pkey') AS pkey, pg_relation_size('telemetry') AS heap,
                      pg_indexes_size('telemetry') AS indexes"""
        )
        assert row is not None
        return (
            f"primary key {row['pkey'] / 2**20:.0f} MiB, table {row['heap'] / 2**20:.0f} MiB,"
            f" all its indexes {row['indexes'] / 2**20:.0f} MiB"
        )
    finally:
        await conn.close()


async def one_round(pool: asyncpg.Pool, store: Any, events: Sequence[Any], batch: int) -> tuple[float, ...]:
    async with pool.acquire() as conn:
        await conn.execute("CHECKPOINT")
        await conn.execute("SELECT pg_stat_force_next_flush()")
        before = await conn.fetchrow(STATS)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        c0, t0 = event_cost.backend_cpu(pid), time.perf_counter()
        for i in range(0, len(events), batch):
            await store(conn, events[i : i + batch])
        t1, c1 = time.perf_counter(), event_cost.backend_cpu(pid)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        after = await conn.fetchrow(STATS)
    assert before is not None
    assert after is not None
    n = len(events)
    reads, hits, table, wal, fpi = (float(a - b) / n for a, b in zip(after, before, strict=True))
    return 1000 * (c1 - c0) / n, 1000 * (t1 - t0) / n, wal, fpi, reads, hits, table


async def run(dsns: dict[str, str], args: argparse.Namespace) -> dict[str, list[tuple[float, ...]]]:
    stack_bench.MODELS = args.models
    pools = {arm: await create_pool(dsn, min_size=1, max_size=1) for arm, dsn in dsns.items()}
    store = event_cost._factory(persister)()
    results: dict[str, list[tuple[float, ...]]] = {arm: [] for arm in dsns}
    next_event = 0
    try:
        for r in range(args.rounds):
            order = list(dsns) if r % 2 == 0 else list(reversed(dsns))
            for arm in order:
                make_id = ARMS[arm]
                events = [
                    msgspec.structs.replace(ev, id=make_id())
                    for ev in stack_bench.telemetry(args.events, next_event)
                ]
                next_event += args.events
                results[arm].append(await one_round(pools[arm], store, events, args.batch))
                pg, wall, wal, fpi, reads, hits, table = results[arm][-1]
                print(
                    f"round {r + 1} {arm:<8} postgres {pg:.3f} ms/event, wall {wall:.3f}, WAL {wal:,.0f} B,"
                    f" FPI {fpi:.2f}, pkey reads {reads:.2f} hits {hits:.2f}, table reads {table:.2f}"
                    f"  (load {load_average()})",
                    flush=True,
                )
    finally:
        for pool in pools.values():
            await pool.close()
    return results


def report(results: dict[str, list[tuple[float, ...]]], batch: int) -> None:
    columns = {arm: list(zip(*rows, strict=True)) for arm, rows in results.items()}
    medians = {arm: [sorted(col)[len(col) // 2] for col in cols] for arm, cols in columns.items()}
    spreads = {arm: [(min(col), max(col)) for col in cols] for arm, cols in columns.items()}
    print(f"\nmedian per event (batches of {batch}), [min-max over rounds]")
    for i, label in enumerate(COLUMNS):
        cells = "  ".join(
            f"{arm} {medians[arm][i]:>9.3f} [{spreads[arm][i][0]:.3f}-{spreads[arm][i][1]:.3f}]"
            for arm in results
        )
        ordered = medians["ordered"][i]
        ratio = f"random/ordered {medians['random'][i] / ordered:.2f}x" if ordered > 0 else "ordered 0"
        print(f"{label:<12} {cells}  {ratio}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows preloaded in each table")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=3000, help="events per round")
    parser.add_argument("--batch", type=int, default=3, help="events per batch (1,000/s: about 3)")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--shared-buffers", default="32MB", help="the measured server's cache")
    args = parser.parse_args(argv)
    print_machine(["asyncpg"])
    print(
        f"load: {args.rows:,} rows preloaded per arm, {args.rounds} rounds of {args.events:,} events"
        f" in batches of {args.batch}, {args.models} models, shared_buffers {args.shared_buffers}",
        flush=True,
    )
    quiet = {"autovacuum": "off", "checkpoint_timeout": "1d", "max_wal_size": "64GB"}
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-id-order-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port(), settings={**quiet, "shared_buffers": "512MB"})
        pg.start()
        try:
            dsns = {arm: pg.create_database(f"llmscope_{arm}") for arm in ARMS}
            for arm, dsn in dsns.items():
                took = asyncio.run(preload(dsn, arm, args.rows, args.models))
                print(f"preloaded {arm:<8} in {took:.0f} s: {asyncio.run(sizes(dsn))}", flush=True)
        finally:
            pg.stop()
        pg.settings["shared_buffers"] = args.shared_buffers
        pg.start()
        try:
            results = asyncio.run(run(dsns, args))
        finally:
            pg.stop()
    report(results, args.batch)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
