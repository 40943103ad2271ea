"""Postgres's CPU per event of two persisters whose schemas differ, each on its own database.

``bench/event_cost.py`` runs both arms on one database, which a migration that drops a table the
other tree writes (0018: ``telemetry_hour``) breaks. Here the ``--tree`` arm gets a database
migrated up to that tree's last migration and this tree's arm one migrated fully, in one
cluster; each is warmed with the same events, then ``--events`` events are stored in batches of
``--batch`` in alternating rounds (per event: the writing backend's CPU from ``/proc``, the
client's, the wall time), and the WAL bytes per event over the rounds.

Usage: ``python bench/schema_ab.py --tree base=/path/to/clone [--rounds 6] [--events 3000] [--batch 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from llmscope.api import persister
from llmscope.api.db import _init_connection, migrations
from llmscope.stack.embedded import EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.one_at_a_time import run_alone

sys.path.insert(0, str(Path(__file__).parent))
stack_bench: Any = importlib.import_module("stack_bench")
event_cost: Any = importlib.import_module("event_cost")


def last_migration(tree: Path) -> int:
    folder = tree / "services/api/src/llmscope/api/migrations"
    return max(int(p.name[:4]) for p in folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def run(
    dsns: dict[str, str], upto: dict[str, int], arms: dict[str, Callable[[], Any]], args: argparse.Namespace
) -> None:
    stack_bench.MODELS = args.models
    pools: dict[str, asyncpg.Pool] = {}
    for name, dsn in dsns.items():
        conn = await asyncpg.connect(dsn)
        for migration in migrations():
            if migration.version <= upto[name]:
                await conn.execute(migration.sql)
        await conn.close()
        # Not db.create_pool: it would migrate the base arm's database to this tree's schema.
        pools[name] = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=_init_connection)
    stores = {name: make() for name, make in arms.items()}
    warm = list(stack_bench.telemetry(args.warm, 0))
    for name, pool in pools.items():
        async with pool.acquire() as held:
            for i in range(0, len(warm), args.batch):
                await stores[name](held, warm[i : i + args.batch])
    next_id = len(warm)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in arms}
    wal: dict[str, float] = dict.fromkeys(arms, 0.0)
    for r in range(args.rounds):
        order = list(stores) if r % 2 == 0 else list(reversed(stores))
        for name in order:
            events = list(stack_bench.telemetry(args.events, next_id))
            next_id += args.events
            lsn = "SELECT pg_current_wal_insert_lsn()"
            w0 = await pools[name].fetchval(lsn)
            results[name].append(await event_cost.one_round(pools[name], stores[name], events, args.batch))
            wal[name] += float(await pools[name].fetchval(f"SELECT pg_wal_lsn_diff(({lsn}), $1)", w0))
            pg, client, wall = results[name][-1]
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(
                f"round {r + 1} {name:<8} postgres {pg:.3f} ms/event, client {client:.3f}, wall {wall:.3f}"
                f"  (load {load})"
            )
    for pool in pools.values():
        await pool.close()
    print(f"\nmedian per event (batches of {args.batch})  postgres   client     wall  WAL bytes")
    for name, rows in results.items():
        med = [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)]
        records = wal[name] / (args.rounds * args.events)
        print(f"{name:<34} {med[0]:>9.3f} {med[1]:>8.3f} {med[2]:>8.3f} {records:>9.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", required=True, help="name=path of another checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=6000)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--batch", type=int, default=3, help="events per batch (1,000/s: about 3)")
    args = parser.parse_args(argv)
    name, _, path = args.tree.partition("=")
    arms: dict[str, Callable[[], Any]] = {name: event_cost.load_store(name, Path(path))}
    arms["this"] = event_cost._factory(persister)
    upto = {name: last_migration(Path(path)), "this": max(m.version for m in migrations())}
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-schema-ab-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        pg.start()
        try:
            dsns = {arm: pg.create_database(f"llmscope_{arm}") for arm in arms}
            asyncio.run(run(dsns, upto, arms, args))
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
