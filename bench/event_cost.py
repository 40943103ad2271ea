"""Postgres's CPU per one-event batch, the persister's write alone (no NATS), for A/B rounds.

At 100 probe events/s the persister's batches hold about one event each, so a transaction per
event is most of what Postgres does. This stores ``--events`` single-event batches (probe-shaped,
``--models`` models, each model's rollup rows already there, as in a running stack) through
``store_telemetry`` of this tree and of each ``--tree`` given (its persister, a module or a
package, loaded under another name; everything else from this tree), in alternating rounds, and
prints per event the CPU of the backend that wrote (``/proc``), the client's, and the wall time.

``--batch K`` stores batches of K events instead (figures still per event).

Usage: ``python bench/event_cost.py [--tree base=/path/to/clone] [--rounds 3] [--events 600] [--batch 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from llmscope.api import persister
from llmscope.api.db import create_pool, migrate
from llmscope.stack.embedded import EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.one_at_a_time import run_alone

sys.path.insert(0, str(Path(__file__).parent))
stack_bench: Any = importlib.import_module("stack_bench")

Store = Callable[[Any, Sequence[Any]], Awaitable[int]]


def load_store(name: str, tree: Path) -> Callable[[], Store]:
    api = tree / "services/api/src/llmscope/api"
    if (api / "persister.py").exists():
        spec = importlib.util.spec_from_file_location(f"bench_persister_{name}", api / "persister.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return _factory(module)
    return _factory(_load_package(api / "persister"))


def _load_package(path: Path) -> Any:
    # A persister split into a package imports its own modules by their absolute names: load the
    # tree's under those names, then put this tree's back (the loaded functions keep their own).
    prefix = "llmscope.api.persister"
    saved = {k: v for k, v in sys.modules.items() if k == prefix or k.startswith(prefix + ".")}
    for k in saved:
        del sys.modules[k]
    try:
        spec = importlib.util.spec_from_file_location(
            prefix, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[prefix] = module
        spec.loader.exec_module(module)
        return module
    finally:
        for k in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _factory(module: Any) -> Callable[[], Store]:
    # A persister may keep state across batches (a cache of what is stored): one per arm.
    make = getattr(module, "TelemetryWriter", None)
    if make is None:
        return lambda: module.store_telemetry
    return lambda: make().store


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(
    pool: asyncpg.Pool, store: Store, events: Sequence[Any], batch: int = 1
) -> tuple[float, float, float]:
    async with pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        c0, u0, t0 = backend_cpu(pid), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(0, len(events), batch):
            await store(conn, events[i : i + batch])
        t1, u1, c1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), backend_cpu(pid)
    client = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    n = len(events)
    return 1000 * (c1 - c0) / n, 1000 * client / n, 1000 * (t1 - t0) / n


async def run(
    dsn: str, arms: dict[str, Callable[[], Store]], rounds: int, n: int, models: int, batch: int = 1
) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(dsn, min_size=1, max_size=1)
    stack_bench.MODELS = models
    next_id = 0
    # Every model's series, rollups and model row there first, as in a running stack.
    stores = {name: make() for name, make in arms.items()}
    warm = list(stack_bench.telemetry(models * 2, next_id))
    next_id += len(warm)
    async with pool.acquire() as c:
        for ev in warm:
            await persister.store_telemetry(c, [ev])
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in arms}
    for r in range(rounds):
        order = list(stores) if r % 2 == 0 else list(reversed(stores))
        for name in order:
            events = list(stack_bench.telemetry(n, next_id))
            next_id += n
            results[name].append(await one_round(pool, stores[name], events, batch))
            pg, client, wall = results[name][-1]
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(
                f"round {r + 1} {name:<8} postgres {pg:.3f} ms/event, client {client:.3f}, wall {wall:.3f}"
                f"  (load {load})"
            )
    hot = await pool.fetch(
        """SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
           WHERE n_tup_upd > 0 ORDER BY relname"""
    )
    await pool.close()
    print("\nupdates (HOT: no index entry written)")
    for row in hot:
        print(f"  {row['relname']:<24} {row['n_tup_upd']:>7} {row['n_tup_hot_upd']:>7} HOT")
    print("\nmedian per event       postgres   client     wall")
    for name, rows in results.items():
        med = [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)]
        print(f"{name:<20} {med[0]:>9.3f} {med[1]:>8.3f} {med[2]:>8.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", action="append", default=[], help="name=path of another checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="events per batch (a steady 1,000/s: 2-10)")
    args = parser.parse_args(argv)
    arms: dict[str, Callable[[], Store]] = {}
    for spec in args.tree:
        name, _, path = spec.partition("=")
        arms[name] = load_store(name, Path(path))
    arms["this"] = _factory(persister)
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-event-cost-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        pg.start()
        try:
            dsn = pg.create_database("llmscope")
            asyncio.run(run(dsn, arms, args.rounds, args.events, args.models, args.batch))
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
