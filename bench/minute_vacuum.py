"""Per-table autovacuum for ``telemetry_minute`` (a candidate for migration 0020): does it help?

Not a test: it prints figures. The fold (persister/hour_fold.py) sets ``folded`` on every minute
row once its hour is over: an update of a column the partial index of unfolded minutes
(``WHERE NOT folded``, migration 0019) names, so never HOT: each minute row leaves a dead tuple,
and a dead entry in every index, until a vacuum. With Postgres's default
``autovacuum_vacuum_scale_factor`` (0.2) a table that keeps 7 days of minutes is vacuumed about
every 34 hours of folds (60 of 10,080 minutes per series die each hour: 0.6 %).

Two databases of one embedded server hold the same store (``--series`` series, 7 days of minute
rollups, folded); one has Postgres's defaults, the other the per-table settings measured
(``TUNED``). Each round simulates one hour on both, in alternating order: 60 minutes of rows
written unfolded, in the middle of the hour the reads of the unfolded minutes timed (the fold's
FOLD_DUE and the comparison's ``fresh`` set, per model), then the fold of the hour (timed) and
retention of the oldest hour. The server's ``autovacuum_naptime`` is shortened as the hours are
(``--naptime``), so that autovacuum looks at each database several times per simulated hour as
it does in an hour of real time. Printed per round: the load average, each database's times, the
partial index's size and its table's dead tuples.

Measured (2 shared cores, load 4.5-6.1; 300 series, 3.0 M minute rows per database, medians of
the last three quarters of the rounds, [min-max]): ``TUNED`` kept the partial index at 464-816 kB
against 1,264 kB and the table's dead tuples at 0.07-0.2 M against 0.55-0.72 M, but the reads did
not move: FOLD_DUE 0.6 [0.2-3.1] vs 0.6 [0.3-4.6] ms and 0.5 vs 1.0 ms in a second run, the
comparison's unfolded minutes 1.1 vs 1.2 ms and 1.5 vs 1.2 ms, the fold 301 vs 255 ms and 431 vs
341 ms (the extra vacuums compete with it). Not adopted: migration 0020 leaves autovacuum as it is.

Usage: ``python bench/minute_vacuum.py [--series-models 100] [--hours 36] [--naptime 5s]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import asyncpg

from llmscope.api.db import create_pool
from llmscope.api.persister.hour_fold import fold_hours
from llmscope.api.persister.sql import FOLD_DUE
from llmscope.stack.embedded import EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.one_at_a_time import run_alone

TUNED = "autovacuum_vacuum_scale_factor = 0.005, autovacuum_vacuum_threshold = 1000"
DAYS = 7
PROMPTS, TARGETS = 3, 2

FRESH = """SELECT DISTINCT u.provider, u.model, u.prompt_id, u.target, date_trunc('hour', u.minute)
    FROM telemetry_minute u
    WHERE u.provider = 'bench' AND u.model = $3 AND NOT u.folded
      AND u.minute >= date_trunc('hour', $1::timestamptz) AND u.minute < $2"""


def _rows(models: int, minute_from: str, minute_to: str, folded: str) -> str:
    return f"""INSERT INTO telemetry_minute (provider, model, prompt_id, target, minute, n, n_ok,
                   latency_n, latency_min, latency_max, latency_sum, latency_logsum, latency_logsq, folded)
    SELECT 'bench', 'model-' || m, 'p' || p, 't' || t, mi, 30, 30, 30, 90, 140, 3300, 138, 640, {folded}
    FROM generate_series(0, {models - 1}) m, generate_series(0, {PROMPTS - 1}) p,
         generate_series(0, {TARGETS - 1}) t,
         generate_series({minute_from}, {minute_to}, interval '1 minute') mi"""


async def seed(pool: asyncpg.Pool, models: int, start: datetime) -> None:
    for day in range(DAYS):
        first = start + timedelta(days=day)
        await pool.execute(
            _rows(models, "$1::timestamptz", "$1::timestamptz + interval '1439 minutes'", "true"), first
        )
    await fold_hours(pool, before=start + timedelta(days=DAYS))  # nothing: every row folded
    await pool.execute(
        """INSERT INTO telemetry_series_hour (provider, model, hour, prompt_id, target, n, n_ok)
           SELECT provider, model, date_trunc('hour', minute), prompt_id, target, sum(n), sum(n_ok)
           FROM telemetry_minute GROUP BY 1, 2, 3, 4, 5"""
    )
    await pool.execute("VACUUM ANALYZE telemetry_minute")


async def timed(job: Callable[[], Awaitable[object]], runs: int = 5) -> float:
    """The median of ``runs`` runs of ``job``, in ms."""
    took = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await job()
        took.append(time.perf_counter() - t0)
    return statistics.median(took) * 1000


async def _fresh(pool: asyncpg.Pool, end: datetime) -> None:
    """The comparison's unfolded minutes of 4 models over 7 days (trends.SERIES_HOURS's ``fresh``)."""
    await asyncio.gather(*(pool.fetch(FRESH, end - timedelta(days=7), end, f"model-{m}") for m in range(4)))


async def one_hour(pool: asyncpg.Pool, models: int, hour: datetime) -> dict[str, float]:
    """One simulated hour: its minutes written, the reads mid-hour, the fold, retention."""
    out: dict[str, float] = {}
    for minute in range(60):
        at = hour + timedelta(minutes=minute)
        await pool.execute(_rows(models, "$1::timestamptz", "$1::timestamptz", "false"), at)
        if minute == 30:
            end = at + timedelta(minutes=1)
            out["due_ms"] = await timed(lambda: pool.fetch(FOLD_DUE, 500, hour))
            out["fresh_ms"] = await timed(partial(_fresh, pool, end))
    t0 = time.perf_counter()
    await fold_hours(pool, before=hour + timedelta(hours=1))
    out["fold_ms"] = (time.perf_counter() - t0) * 1000
    await pool.execute(
        "DELETE FROM telemetry_minute WHERE minute < $1", hour + timedelta(hours=1) - timedelta(days=DAYS)
    )
    out["idx_kb"] = await pool.fetchval("SELECT pg_relation_size('telemetry_minute_unfolded_idx')") / 1024
    out["dead"] = await pool.fetchval(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'telemetry_minute'"
    )
    out["vacuums"] = await pool.fetchval(
        "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'telemetry_minute'"
    )
    return out


async def run(models: int, hours: int, naptime: str) -> None:
    print_machine(("asyncpg",))
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-pg-") as tmp:
        server = EmbeddedPostgres(
            Path(tmp) / "data", free_port(), durable=False, settings={"autovacuum_naptime": naptime}
        )
        server.start()
        try:
            admin = await asyncpg.connect(server.url())
            for name in ("defaults", "tuned"):
                await admin.execute(f"CREATE DATABASE {name}")
            await admin.close()
            pools = {
                name: await create_pool(server.url(name), min_size=1, max_size=4, statement_timeout_s=0)
                for name in ("defaults", "tuned")
            }
            start = datetime(2026, 1, 1, tzinfo=UTC)
            t0 = time.perf_counter()
            for pool in pools.values():
                await seed(pool, models, start)
            await pools["tuned"].execute(f"ALTER TABLE telemetry_minute SET ({TUNED})")
            rows = await pools["tuned"].fetchval("SELECT count(*) FROM telemetry_minute")
            print(
                f"== {rows:,} minute rows per database ({models * PROMPTS * TARGETS} series, {DAYS} days), "
                f"seeded in {time.perf_counter() - t0:.0f} s; tuned: {TUNED}; autovacuum_naptime {naptime}"
            )
            print(
                f"{'round':>5} {'load1':>5} {'db':>8} {'due ms':>7} {'fresh ms':>8} {'fold ms':>8} "
                f"{'idx kB':>7} {'dead':>8} {'vacs':>4}"
            )
            seen: dict[str, list[dict[str, float]]] = {"defaults": [], "tuned": []}
            for r in range(hours):
                hour = start + timedelta(days=DAYS, hours=r)
                order = ("defaults", "tuned") if r % 2 == 0 else ("tuned", "defaults")
                for name in order:
                    got = await one_hour(pools[name], models, hour)
                    seen[name].append(got)
                    print(
                        f"{r:>5} {os.getloadavg()[0]:>5.1f} {name:>8} {got['due_ms']:>7.1f} "
                        f"{got['fresh_ms']:>8.1f} {got['fold_ms']:>8.0f} {got['idx_kb']:>7.0f} "
                        f"{got['dead']:>8.0f} {got['vacuums']:>4.0f}",
                        flush=True,
                    )
            print("== medians over the rounds (after the first quarter)")
            for name, rounds in seen.items():
                late = rounds[len(rounds) // 4 :]
                cols = ("due_ms", "fresh_ms", "fold_ms", "idx_kb", "dead")
                med = {c: statistics.median(x[c] for x in late) for c in cols}
                spread = {c: (min(x[c] for x in late), max(x[c] for x in late)) for c in cols}
                print(
                    f"{name:>8}: "
                    + ", ".join(f"{c} {med[c]:.1f} [{spread[c][0]:.1f}-{spread[c][1]:.1f}]" for c in cols)
                )
            for pool in pools.values():
                await pool.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series-models", type=int, default=100, help="models (x3 prompts x2 targets)")
    parser.add_argument("--hours", type=int, default=36, help="simulated hours per database")
    parser.add_argument("--naptime", default="5s", help="the server's autovacuum_naptime")
    opts = parser.parse_args()
    asyncio.run(run(opts.series_models, opts.hours, opts.naptime))


if __name__ == "__main__":
    run_alone(main, __file__)
