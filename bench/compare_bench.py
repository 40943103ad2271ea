"""Comparison chart benchmark (issue 11): a 7-day chart of 4 models from the rollups, server time.

Not a test: it prints figures, each next to a baseline measured in the same run on the same
tables. An embedded PostgreSQL holds what a 30-day retention keeps of 8 models probed every 2 s
(3 prompts x 2 targets each): 2.07 M minute rollups, and the hourly rollups per prompt and target
migration 0011 folds from them (the hourly rollups per model of 0008 were dropped by 0018: the
comparison sums those of the model's series). Figures are the median of several runs
after a warm-up (the shared machine is noisy).

(a) the 7-day query as it was (``telemetry_minute``, bucket by ``floor(extract(epoch ...))``);
(b) the same window from the minute rollups with ``date_bin`` (the fix without the new table);
(c) ``TrendQueries.comparison`` as the page calls it now: 7 days from ``telemetry_series_hour``;
(d) (c) plus the SVG the page draws: the server's work for the chart;
(e) 24 h and 30 days as the page calls them (minute and hour rollups);
(g) one model's prompts, one line each, over 7 and 30 days (``by="prompt"``: the hourly rollups
    of each series, ``telemetry_series_hour``), against (h) the 30-day query as it was (the
    minute rollups, the only ones that kept prompts apart before 0011);
(f) the part of (c) that reads the re-baseline marks (``baseline_history``, every chart of every
    model re-baselined twice a day over the whole history: far more than a team does).

Usage: ``python bench/compare_bench.py [--quick]`` (--quick: 7 days of history, 3 runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg

from llmscope.api.charts import ChartViews
from llmscope.api.db import create_pool
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.trends import TrendQueries
from llmscope.config.outbound import OutboundPolicy
from llmscope.stack.embedded import EmbeddedPostgres
from llmscope.stack.ports import free_port
from llmscope.web.trend_svg import render_comparison
from llmscope.web.trends import compare_bucket_s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.one_at_a_time import run_alone

MODELS = 8
COMPARED = [("ollama", f"model-{i}") for i in range(4)]
BEFORE = """SELECT provider, model,
           to_timestamp(floor(extract(epoch FROM minute) / $3) * $3) AS bucket,
           sum(latency_n) AS n, sum(latency_logsum) AS ls, min(latency_min) AS lo, max(latency_max) AS hi
    FROM telemetry_minute
    WHERE minute >= $1 AND minute < $2
      AND (provider, model) IN (SELECT * FROM unnest($4::text[], $5::text[]))
    GROUP BY 1, 2, 3 HAVING sum(latency_n) > 0 ORDER BY 3"""
MINUTES_DATE_BIN = """SELECT t.provider, t.model,
           date_bin(make_interval(secs => $3), t.minute, 'epoch') AS bucket,
           sum(latency_n) AS n, sum(latency_logsum) AS ls, min(latency_min) AS lo, max(latency_max) AS hi
    FROM unnest($4::text[], $5::text[]) AS m(provider, model)
    JOIN telemetry_minute t ON t.provider = m.provider AND t.model = m.model
    WHERE t.minute >= $1 AND t.minute < $2
    GROUP BY 1, 2, 3 HAVING sum(latency_n) > 0 ORDER BY 3"""
# What TrendQueries.comparison asked by prompt before migration 0011, whatever the window.
PROMPTS_FROM_MINUTES = """SELECT t.provider, t.model, t.prompt_id AS part,
           date_bin(make_interval(secs => $3), t.minute, 'epoch') AS bucket,
           sum(latency_n) AS n, sum(latency_logsum) AS ls, sum(latency_logsq) AS lq,
           min(latency_min) AS lo, max(latency_max) AS hi
    FROM unnest($4::text[], $5::text[]) AS m(provider, model)
    JOIN telemetry_minute t ON t.provider = m.provider AND t.model = m.model
    WHERE t.minute >= $1 AND t.minute < $2
    GROUP BY 1, 2, 3, 4 HAVING sum(latency_n) > 0 ORDER BY 4"""


async def seed(pool: asyncpg.Pool, days: int) -> int:
    # 5 probes per minute per prompt and target: 30 a minute per model, one every 2 s.
    await pool.execute(
        """INSERT INTO telemetry_minute (provider, model, prompt_id, target, minute, n, n_ok,
               latency_n, latency_min, latency_max, latency_sum, latency_logsum, latency_logsq, folded)
           SELECT 'ollama', 'model-' || m, 'p' || p, 't' || tg,
                  date_trunc('minute', now()) - make_interval(mins => i), 5, 5, 5,
                  80 + m * 10, 140 + m * 10, 5 * (100 + m * 10), 5 * ln(100 + m * 10 + (i % 17)),
                  5 * ln(100 + m * 10 + (i % 17)) ^ 2 + 0.2,
                  -- As the persister's fold leaves them (migration 0019): every hour that is over
                  -- folded, the current hour's minutes read as they are (set here, not by an
                  -- UPDATE of every row, which left 2 M dead rows in the unfolded minutes' index).
                  date_trunc('minute', now()) - make_interval(mins => i) < date_trunc('hour', now())
           FROM generate_series(0, $1 - 1) m, generate_series(0, 2) p, generate_series(0, 1) tg,
                generate_series(0, $2 * 1440 - 1) i""",
        MODELS,
        days,
    )
    sql = (files("llmscope.api") / "migrations" / "0011_series_hour.sql").read_text()
    started = time.perf_counter()
    await pool.execute(sql[sql.index("INSERT INTO telemetry_series_hour") :])
    # What upgrading a store of this size costs once: the migration runs at the API's start.
    print(f"== migration 0011's backfill: {time.perf_counter() - started:.1f} s")
    # Every chart (3 prompts x 2 targets x 4 metrics of each model) re-baselined twice a day: far
    # more than a team does, so the comparison's read of the re-baseline marks is not flattered.
    await pool.execute(
        """INSERT INTO baseline_history (chart_key, baseline_id, number, provider, model, target,
               prompt_id, metric, n, started_at, ended_at, created_by, reason)
           SELECT concat_ws('.', 'ollama', 'model-' || m, 't' || tg, 'p' || p, x), 'b' || k, k,
                  'ollama', 'model-' || m, 't' || tg, 'p' || p, x, 300,
                  now() - make_interval(hours => 12 * k), now() - make_interval(hours => 12 * k - 1),
                  'bench', 'scheduled'
           FROM generate_series(0, $1 - 1) m, generate_series(0, 2) p, generate_series(0, 1) tg,
                unnest(ARRAY['latency_ms', 'ttft_ms', 'tokens_per_s', 'availability']) x,
                generate_series(1, $2 * 2) k""",
        MODELS,
        days,
    )
    await pool.execute("ANALYZE telemetry_minute; ANALYZE telemetry_series_hour; ANALYZE baseline_history")
    return int(await pool.fetchval("SELECT count(*) FROM telemetry_minute"))


async def timed(runs: int, call: Callable[[], Awaitable[Any]]) -> float:
    await call()  # warm-up: plans and pages cached
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def line(label: str, ms: float, base: float | None = None, than: str = "(a)") -> None:
    ratio = f"   {base / ms:5.1f}x faster than {than}" if base else ""
    print(f"  {label:<58} {ms:8.1f} ms{ratio}")


async def run(days: int, runs: int) -> None:
    print_machine(("fastapi", "asyncpg"))
    with tempfile.TemporaryDirectory(prefix="llmscope-bench-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data", free_port())
        server.start()
        try:
            pool = await create_pool(server.url(), min_size=1, max_size=2, statement_timeout_s=0)
            try:
                started = time.perf_counter()
                rows = await seed(pool, days)
                series_hours = await pool.fetchval("SELECT count(*) FROM telemetry_series_hour")
                marks = await pool.fetchval("SELECT count(*) FROM baseline_history")
                print(
                    f"== {rows:,} minute rollups, "
                    f"{series_hours:,} hour rollups by prompt and target, {marks:,} baselines in "
                    f"baseline_history ({MODELS} models, {days} days), "
                    f"seeded in {time.perf_counter() - started:.0f} s"
                )
                await measure(pool, runs)
            finally:
                await pool.close()
        finally:
            server.stop()


async def measure(pool: asyncpg.Pool, runs: int) -> None:
    store = Store(charts=ChartViews(), switches=ModelSwitchWriter(), outbound=OutboundPolicy(()))
    store.attach(pool)
    trends = TrendQueries(store)
    end = datetime.now(UTC)
    week_bucket = 2520  # 7 d / 240 buckets, as the page bucketed it before whole hours
    args = (end - timedelta(days=7, seconds=week_bucket), end, week_bucket)
    names = ([p for p, _ in COMPARED], [m for _, m in COMPARED])
    print(f"== 7-day comparison of {len(COMPARED)} models, median of {runs} runs")
    base = await timed(runs, lambda: pool.fetch(BEFORE, *args, *names))
    line("(a) minute rollups, floor(extract(epoch)) (before)", base)
    line(
        "(b) minute rollups, date_bin",
        await timed(runs, lambda: pool.fetch(MINUTES_DATE_BIN, *args, *names)),
        base,
    )
    assert compare_bucket_s(168) == 3600
    line(
        "(c) TrendQueries.comparison: hour rollups",
        await timed(runs, lambda: trends.comparison(COMPARED, "latency_ms", 168)),
        base,
    )

    async def with_svg(hours: float) -> None:
        render_comparison(await trends.comparison(COMPARED, "latency_ms", hours))

    line("(d) (c) and its SVG: the chart's server time", await timed(runs, lambda: with_svg(168)), base)
    week = (end - timedelta(days=7), end)
    line(
        "(f) of (c): the re-baseline marks (baseline_history)",
        await timed(runs, lambda: trends.rebaselines(COMPARED, *week)),
    )
    print("== the page's other windows, with the SVG")
    line("(e) 24 h (6-minute buckets, minute rollups)", await timed(runs, lambda: with_svg(24)))
    line("(e) 30 days (3-hour buckets, hour rollups)", await timed(runs, lambda: with_svg(720)))
    print("== one model, a line per prompt, with the SVG")
    month_bucket = compare_bucket_s(720)
    month = (end - timedelta(days=30, seconds=month_bucket), end, month_bucket)
    one = ([COMPARED[0][0]], [COMPARED[0][1]])
    before = await timed(runs, lambda: pool.fetch(PROMPTS_FROM_MINUTES, *month, *one))
    line("(h) 30 days by prompt, minute rollups (before 0011)", before)
    for hours in (168, 720):

        async def split(h: float = hours) -> None:
            render_comparison(await trends.comparison(COMPARED[:1], "latency_ms", h, by="prompt"))

        label = f"(g) {hours // 24} days by prompt (series hour rollups)"
        ratio = before if hours == 720 else None
        line(label, await timed(runs, split), ratio, "(h)")
    store.attach(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 days of history, 3 runs")
    opts = parser.parse_args()
    asyncio.run(run(days=7 if opts.quick else 30, runs=3 if opts.quick else 9))


if __name__ == "__main__":
    run_alone(main, __file__)
