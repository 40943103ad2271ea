"""What the persister's small-batch statements write to the WAL, record type by record type.

Stores ``--warm`` probe events (``--models`` models, in batches of ``--batch``) into a fresh
embedded cluster (fsync on, as ``llmscope up``), then ``--events`` more in batches of ``--batch``,
and prints the backend's CPU per event and ``pg_waldump --stats=record`` over those last events
(records, full-page images and bytes by type: heap inserts, HOT updates, the tuple locks of
``ON CONFLICT DO UPDATE``, speculative-insertion confirmations, prunes, index inserts). With
``--checkpoint`` a CHECKPOINT runs first, so the first change of each page writes its full image,
as after every checkpoint in a running store. ``--explain`` prints ``EXPLAIN (ANALYZE, BUFFERS,
WAL)`` of one more batch.

Usage: ``python bench/wal_records.py [--events 4000] [--batch 4] [--models 200] [--checkpoint]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from llmscope.api import persister
from llmscope.api.db import migrate
from llmscope.api.persister.rollups import one_rollup
from llmscope.api.persister.sql import STORE_NEW_TELEMETRY_ARRAYS, STORE_ONE_TELEMETRY
from llmscope.stack.embedded import EmbeddedPostgres, postgres_bin_dir
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).parent))
stack_bench: Any = importlib.import_module("stack_bench")
event_cost: Any = importlib.import_module("event_cost")


async def run(dsn: str, data_dir: Path, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        stack_bench.MODELS = args.models
        next_id = 0
        warm = list(stack_bench.telemetry(args.warm, next_id))
        next_id += len(warm)
        for i in range(0, len(warm), args.batch):
            await persister.store_telemetry(conn, warm[i : i + args.batch])
        if args.checkpoint:
            await conn.execute("CHECKPOINT")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        lsn0 = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        events = list(stack_bench.telemetry(args.events, next_id))
        next_id += len(events)
        cpu0, t0 = event_cost.backend_cpu(pid), time.perf_counter()
        for i in range(0, len(events), args.batch):
            await persister.store_telemetry(conn, events[i : i + args.batch])
        cpu1, t1 = event_cost.backend_cpu(pid), time.perf_counter()
        lsn1 = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        n = len(events)
        print(
            f"{n:,} events in batches of {args.batch}: backend CPU {1000 * (cpu1 - cpu0) / n:.3f} ms/event,"
            f" wall {1000 * (t1 - t0) / n:.3f} ms/event"
        )
        waldump = [str(postgres_bin_dir() / "pg_waldump"), "-p", str(data_dir / "pg_wal")]
        dump = await asyncio.to_thread(
            subprocess.run,
            [*waldump, "-s", lsn0, "-e", lsn1, "--stats=record"],
            capture_output=True,
            text=True,
            check=False,
        )
        print(dump.stdout or dump.stderr)
        if args.explain:
            batch = list(stack_bench.telemetry(args.batch, next_id))
            records = [persister.telemetry_record(ev) for ev in batch]
            if args.batch == 1:
                sql, params = STORE_ONE_TELEMETRY, [*records[0], *one_rollup(batch[0])]
            else:
                sql, params = STORE_NEW_TELEMETRY_ARRAYS, [records]
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) " + sql, *params)
            print("\n".join(r[0] for r in plan))
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--warm", type=int, default=20_000, help="events stored first")
    parser.add_argument("--batch", type=int, default=4, help="events per batch (1,000/s: about 4)")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--checkpoint", action="store_true", help="a CHECKPOINT before the measured events")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS, WAL) one batch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmscope-wal-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        pg.start()
        try:
            asyncio.run(run(pg.create_database("llmscope"), Path(tmp) / "pg", args))
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
