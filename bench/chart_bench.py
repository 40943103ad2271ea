"""24 h control chart benchmark (issue 13): the dashboard's chart request, its bytes and marks.

Not a test: it prints figures, each beside a ceiling measured in the same run on the same store.
An embedded PostgreSQL holds 24 h of one model probed every 2 s per prompt and target (2 prompts
x 2 targets: 43,200 probes per chart, 172,800 in all, 0.5 % failed), stored with the persister's
own ``store_telemetry`` (which writes the per-minute rollups as it does in production), and
2,400 violations of the charted prompt and target spread over the day (critical, warning and info
mixed; half of them cleared) plus 12 critical ones in the last hour, and 600 on its other charts,
stored with ``store_violations``. A real SPC engine, run in-process on an embedded nats-server
over the chart's last probes until it arms, writes the chart's KV record in its own format.

The requests are the page's own, through the real app (in-process ASGI: server time, no network),
signed in with a session cookie, HTMX headers as htmx sends them:

(a) the chart panel at 24 h (``HX-Target: chart-panel``): what an open tab re-reads when new
    probes of its model are stored (throttled to one per 2 s);
(b) the panel at 24 h (``HX-Target: panel``): the window picked in the selector;
(c) the whole page ``/dashboard?...&hours=24`` (a first load);
(d) the violation-log poll fragment (``HX-Target: violation-log``);
ceilings: (e) ``GET /api/violations?limit=15`` (JSON, bearer key) and (f) the bare rollup query
of (a)'s chart, by itself on the pool (no HTTP, no rendering).

Every request accepts gzip, as a browser's does, except (a), which is asked both ways in turn: in
the clear (what every answer was before the app compressed anything) and gzip; the bytes as sent
are printed beside the decoded size, and the CPU time of gzipping (a)'s body by itself, at the
app's level 6 and at level 9, is measured in the same rounds.

Then it checks that the chart draws, of the violations in its window, the most severe and of
those the newest within its marks budget (never the oldest), and reads off the page what an idle
tab costs: its fragments' ``hx-trigger``.

Usage: ``python bench/chart_bench.py [--quick]`` (--quick: a probe every 10 s, fewer violations
and runs; the same checks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

import asyncpg
import httpx
import nats
from fastapi import FastAPI

from llmscope.api.app import create_app
from llmscope.api.charts import ChartViews
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.runtime import Runtime
from llmscope.api.settings import ApiSettings
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.base import new_id
from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent
from llmscope.spc_engine.service import serve as serve_engine
from llmscope.spc_engine.settings import SpcSettings
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port
from llmscope.web.pages import LIVE_FALLBACK_FILTER
from llmscope.web.svg import MARKS_DRAWN

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.one_at_a_time import run_alone

API_KEY = "bench-key-0123456789abcdef"
PROVIDER: Final = "ollama"
MODEL = "llama3.1:8b"
PROMPTS = ("simple-1", "medium-1")
TARGETS = ("gpu-a", "gpu-b")
# The chart the page shows: the first prompt, the first target, latency.
PROMPT, TARGET, METRIC = PROMPTS[0], TARGETS[0], "latency_ms"
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
# As the dashboard's severity filter "warning and above" (its default) shows them.
SHOWN = ("critical", "warning")
RECENT_CRITICAL = 12
# Days of rollups and violations before the charted day (a month of running).
HISTORY_DAYS = 29
HX = {"HX-Request": "true"}


async def add_history(pool: asyncpg.Pool, days: int) -> None:
    """The days before: the day's minute rollups and violations copied back one day at a time, so
    the tables hold what a month of running keeps (raw probes are not copied: a 24 h chart reads
    rollups) and the planner sees tables of that size."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """CREATE TEMP TABLE day_m ON COMMIT DROP AS SELECT * FROM telemetry_minute;
               CREATE TEMP TABLE day_v ON COMMIT DROP AS SELECT * FROM violations"""
        )
        for _ in range(days):
            await conn.execute(
                """UPDATE day_m SET minute = minute - interval '1 day';
                   INSERT INTO telemetry_minute SELECT * FROM day_m ON CONFLICT DO NOTHING;
                   UPDATE day_v SET ts = ts - interval '1 day', id = id || 'h',
                                    episode_id = episode_id || 'h',
                                    cleared_at = cleared_at - interval '1 day';
                   INSERT INTO violations SELECT * FROM day_v"""
            )
    # Vacuumed as autovacuum keeps a month-old store (the visibility map lets index-only scans
    # skip the heap).
    for table in ("telemetry", "telemetry_minute", "violations"):
        await pool.execute(f"VACUUM ANALYZE {table}")


@dataclass(frozen=True)
class Seeded:
    telemetry: int
    per_chart: int
    minutes: int
    violations: list[ViolationEvent]  # the charted prompt's and target's latency violations
    other_violations: int
    all_violations: int
    record_bytes: int


def probes(start: datetime, end: datetime, every_s: float, rng: random.Random) -> list[TelemetryEvent]:
    """Every prompt and target probed every ``every_s``: lognormal latency with a slow daily swing."""
    out = []
    n = int((end - start).total_seconds() / every_s)
    for prompt_no, prompt in enumerate(PROMPTS):
        for target_no, target in enumerate(TARGETS):
            centre = 800.0 * (1 + 0.4 * prompt_no) * (1 + 0.1 * target_no)
            for i in range(n):
                ts = start + timedelta(seconds=every_s * i)
                swing = 1 + 0.05 * math.sin(2 * math.pi * i / n)
                ok = rng.random() >= 0.005
                latency = centre * swing * math.exp(0.3 * rng.gauss(0, 1)) if ok else None
                out.append(
                    TelemetryEvent(
                        id=f"{prompt_no}{target_no}-{i:07d}",
                        ts=ts,
                        provider=PROVIDER,
                        model=MODEL,
                        target=target,
                        host=target,
                        prompt_id=prompt,
                        prompt_hash="ab" * 32,
                        status="ok" if ok else "timeout",
                        error=None if ok else "timed out after 30 s",
                        latency_ms=latency,
                        ttft_ms=latency / 5 if latency else None,
                        tokens_per_s=40.0 + rng.random() * 10 if ok else None,
                        eval_count=64 if ok else None,
                        cpu_percent=12.5,
                        memory_percent=40.0,
                    )
                )
    return out


def limits(center: float, sigma: float) -> ChartLimits:
    return ChartLimits(
        center=center,
        sigma=sigma,
        ucl=center + 3 * sigma,
        lcl=max(center - 3 * sigma, 0.0),
        zone_a_upper=center + 2 * sigma,
        zone_a_lower=center - 2 * sigma,
        zone_b_upper=center + sigma,
        zone_b_lower=center - sigma,
    )


RULES = {"critical": ("R1", "1 point beyond 3 sigma"), "warning": ("R5", "2 of 3 beyond 2 sigma")}


def violation(
    ts: datetime, severity: str, target: str, metric: str, value: float, vid: str
) -> ViolationEvent:
    rule, name = RULES.get(severity, ("R2", "9 points on one side"))
    return ViolationEvent(
        id=vid,
        episode_id=vid,
        ts=ts,
        provider=PROVIDER,
        model=MODEL,
        target=target,
        host=target,
        prompt_id=PROMPT,
        metric=metric,
        chart_key=chart_key(PROVIDER, MODEL, target, PROMPT, metric),
        rule=rule,
        rule_name=name,
        severity=severity,  # type: ignore[arg-type]
        value=value,
        deviation_sigma=3.4,
        limits=limits(800.0, 240.0),
        baseline=BaselineRef(id="b-bench", n=1000),
        point_ids=(f"p-{vid}",),
        point_values=(value,),
        point_ts=(ts,),
    )


def cleared(ev: ViolationEvent, at: datetime) -> ViolationEvent:
    fields = {f: getattr(ev, f) for f in ev.__struct_fields__}
    return ViolationEvent(**{**fields, "id": new_id(), "state": "cleared", "episode_id": ev.id, "ts": at})


def violations(
    start: datetime, end: datetime, n: int, rng: random.Random
) -> tuple[list[ViolationEvent], list[ViolationEvent]]:
    """The charted chart's violations (spread over all but the last hour, plus criticals in the
    last hour), and those of its other charts."""
    span = (end - start).total_seconds() - 3600
    charted = []
    for i in range(n):
        ts = start + timedelta(seconds=span * (i + rng.random()) / n)
        severity = rng.choices(("critical", "warning", "info"), (8, 50, 42))[0]
        charted.append(violation(ts, severity, TARGET, METRIC, 2400 + 400 * rng.random(), new_id()))
    for i in range(RECENT_CRITICAL):
        ts = end - timedelta(seconds=3000 * (i + 1) / (RECENT_CRITICAL + 1))
        charted.append(violation(ts, "critical", TARGET, METRIC, 3000.0 + i, new_id()))
    others = []
    for _ in range(n // 4):
        ts = start + timedelta(seconds=span * rng.random())
        target, metric = rng.choice(((TARGETS[1], METRIC), (TARGET, "ttft_ms"), (TARGET, "tokens_per_s")))
        severity = rng.choice(("critical", "warning", "info"))
        others.append(violation(ts, severity, target, metric, 500.0, new_id()))
    return charted, others


async def arm_the_chart(nats_url: str, charts: ChartViews, events: Sequence[TelemetryEvent]) -> int:
    """Run the real engine over the chart's last probes until its KV record is armed; the size of
    the record (with the engine's own config and state) in bytes."""
    nc = await nats.connect(nats_url)
    settings = SpcSettings(bus=BusSettings(nats_url=nats_url), snapshot_interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_engine(settings, stop))
    key = chart_key(PROVIDER, MODEL, TARGET, PROMPT, METRIC)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.bus)
        acks = [
            await js.publish_async(
                subjects.telemetry(e.provider, e.model), codec.encode(e), headers={"Nats-Msg-Id": e.id}
            )
            for e in events
        ]
        await asyncio.gather(*acks)
        charts.attach(nc)
        deadline = time.monotonic() + 180
        while True:
            record = await charts.get(key)
            if record is not None and record.view is not None and record.view.phase == "armed":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine did not arm {key} within 180 s: {record}")
            await asyncio.sleep(0.2)
        entry = await (await js.key_value(subjects.SPC_CHARTS_BUCKET)).get(key)
        return len(entry.value or b"")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        charts.attach(None)
        await nc.close()


async def seed(pool: asyncpg.Pool, nats_url: str, every_s: float, n_violations: int) -> Seeded:
    rng = random.Random(13)
    end = datetime.now(UTC)
    start = end - timedelta(hours=24)
    events = probes(start, end, every_s, rng)
    async with pool.acquire() as conn:
        for i in range(0, len(events), 5000):
            await store_telemetry(conn, events[i : i + 5000])
    charted, others = violations(start, end, n_violations, rng)
    # Half the episodes cleared a little later, as the engine clears them.
    clears = [cleared(v, v.ts + timedelta(seconds=30)) for v in [*charted, *others][::2]]
    async with pool.acquire() as conn:
        await store_violations(conn, [*charted, *others])
        await store_violations(conn, clears)
    await add_history(pool, HISTORY_DAYS)
    chart_events = [e for e in events if (e.prompt_id, e.target) == (PROMPT, TARGET)]
    # The engine needs its baseline (1,000 probes) and a little more to arm.
    record_bytes = await arm_the_chart(nats_url, ChartViews(), chart_events[-1200:])
    return Seeded(
        telemetry=len(events),
        per_chart=len(chart_events),
        minutes=int(await pool.fetchval("SELECT count(*) FROM telemetry_minute")),
        violations=charted,
        other_violations=len(others),
        all_violations=int(await pool.fetchval("SELECT count(*) FROM violations")),
        record_bytes=record_bytes,
    )


@contextlib.asynccontextmanager
async def running_api(database_url: str, nats_url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = ApiSettings(
        database_url=Secret(database_url),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=nats_url),
        port=0,
        persister=False,  # the store is seeded; nothing else writes during the runs
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        yield app, client


def line(label: str, ms: tuple[float, float], body: bytes | None = None, sent: str = "") -> None:
    size = f"   {len(body):>9,} B (sent: {sent})" if body is not None else ""
    print(f"  {label:<60} {ms[0]:7.1f} / {ms[1]:7.1f} ms{size}")


def drawn_marks(html: str) -> list[str]:
    return re.findall(r'<a href="/violations/([^"]+)"><circle', html)


def check_marks(html: str, seeded: Seeded, start: datetime) -> None:
    """The chart draws the most severe, then newest, marks of its window within the budget."""
    shown = [v for v in seeded.violations if v.severity in SHOWN and v.ts >= start]
    want = sorted(shown, key=lambda v: (SEVERITY_RANK[v.severity], -v.ts.timestamp()))[:MARKS_DRAWN]
    drawn = drawn_marks(html)
    last_hour = start + timedelta(hours=23)
    recent = [v.id for v in seeded.violations if v.severity == "critical" and v.ts >= last_hour]
    criticals = [v.id for v in shown if v.severity == "critical"]
    warnings = sorted((v for v in shown if v.severity == "warning"), key=lambda v: v.ts)
    ok = set(drawn) == {v.id for v in want} and len(drawn) == len(want)
    ok = ok and set(recent) <= set(drawn) and set(criticals[-MARKS_DRAWN:]) <= set(drawn)
    over = len(shown) > MARKS_DRAWN
    ok = ok and warnings[-1].id in drawn and (not over or warnings[0].id not in drawn)
    print(
        f"== marks: {len(drawn):,} drawn of {len(shown):,} {'+'.join(SHOWN)} violations in the window "
        f"(budget {MARKS_DRAWN:,}); {len(set(criticals) & set(drawn))} of {len(criticals)} critical "
        f"drawn, the {len(recent)} of the last hour among them; newest warning drawn, oldest "
        f"{'not drawn' if over else 'drawn (under budget)'}: "
        f"{'OK' if ok else 'WRONG'}"
    )
    if not ok:
        raise SystemExit("the chart does not draw the most severe and newest marks")


def triggers(html: str, element_id: str) -> str:
    found = re.search(rf'<[^>]*id="{element_id}"[^>]*hx-trigger="([^"]*)"', html)
    return found.group(1) if found else "(none)"


async def measure(
    app: FastAPI, client: httpx.AsyncClient, pool: asyncpg.Pool, seeded: Seeded, runs: int, save: Path | None
) -> None:
    r = await client.post("/login", data={"key": API_KEY, "next": "/dashboard"})
    assert r.status_code == 303, r.text
    query = {
        "provider": PROVIDER,
        "model": MODEL,
        "prompt_id": PROMPT,
        "target": TARGET,
        "metric": METRIC,
        "hours": "24",
        "severity": "warning",
    }
    url = f"/dashboard?{urlencode(query)}"
    bodies: dict[str, bytes] = {}  # as decoded
    wire: dict[str, bytes] = {}  # as sent
    tags: dict[str, str] = {}
    encodings: dict[str, str] = {}

    def get(name: str, path: str, headers: dict[str, str]) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            async with client.stream("GET", path, headers=headers) as resp:
                raw = b"".join([chunk async for chunk in resp.aiter_raw()])
            assert resp.status_code == 200, (path, resp.status_code, raw[:300])
            coding = resp.headers.get("content-encoding", "none")
            wire[name], bodies[name] = raw, gzip.decompress(raw) if coding == "gzip" else raw
            encodings[name], tags[name] = coding, resp.headers.get("etag", "")

        return call

    def gzip_cpu(level: int) -> Callable[[], Awaitable[None]]:
        """What the middleware does to (a)'s body, by itself: CPU time, not wall time."""

        async def call() -> None:
            body = bodies["a"]
            started = time.process_time()
            packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            packed = packer.compress(body) + packer.flush()
            cpu[level].append((time.process_time() - started) * 1000)
            sizes[level] = len(packed)

        return call

    cpu: dict[int, list[float]] = {6: [], 9: []}
    sizes: dict[int, int] = {}

    bearer = {"Authorization": f"Bearer {API_KEY}"}
    rt = app.state.runtime
    assert isinstance(rt, Runtime)
    start = datetime.now(UTC) - timedelta(hours=24)
    # The chart's rollup query by itself: what any server must read for this chart.
    bare = """SELECT to_timestamp(floor(extract(epoch FROM minute) / $5) * $5) AS bucket,
                     sum(latency_n) AS n, min(latency_min) AS lo, max(latency_max) AS hi,
                     sum(latency_sum) AS s, sum(latency_logsum) AS ls
              FROM telemetry_minute
              WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND minute >= $4 AND target = $6
              GROUP BY 1 HAVING sum(latency_n) > 0 ORDER BY 1"""

    async def rollups() -> None:
        await pool.fetch(bare, PROVIDER, MODEL, PROMPT, start, 240, TARGET)

    print(f"== 24 h control chart of one prompt and target, median / p95 of {runs} runs, server time")
    # Interleaved rounds: the subject and its ceilings see the same moments of a noisy machine.
    # As a browser asks: gzip accepted. (a) is asked both ways, alternately: identity is what
    # every answer was before compression (and what a client that does not accept gzip gets).
    gz, plain = {"Accept-Encoding": "gzip, deflate"}, {"Accept-Encoding": "identity"}
    calls = {
        "a": get("a", url, {**HX, "HX-Target": "chart-panel", **plain}),
        "a+gz": get("a+gz", url, {**HX, "HX-Target": "chart-panel", **gz}),
        "b": get("b", url, {**HX, "HX-Target": "panel", **gz}),
        "c": get("c", url, gz),
        "d": get("d", url, {**HX, "HX-Target": "violation-log", **gz}),
        "e": get("e", "/api/violations?limit=15", {**bearer, **gz}),
        "f": rollups,
        "gzip-6": gzip_cpu(6),
        "gzip-9": gzip_cpu(9),
    }
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        await call()  # warm-up: plans, templates and the bucket handle cached
    cpu[6].clear()
    cpu[9].clear()
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)

    def stats(name: str) -> tuple[float, float]:
        times = sorted(samples[name])
        return statistics.median(times), times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]

    def sent(name: str) -> str:
        return f"{len(wire[name]):,} B {encodings[name]}"

    line("(a) chart panel, 24 h (HX-Target chart-panel: live re-read)", stats("a"), bodies["a"], sent("a"))
    line("(a) the same, gzip accepted", stats("a+gz"), bodies["a+gz"], sent("a+gz"))
    line("(b) panel, 24 h (HX-Target panel: the window picked)", stats("b"), bodies["b"], sent("b"))
    line("(c) whole page /dashboard?...&hours=24", stats("c"), bodies["c"], sent("c"))
    line("(d) violation-log poll (HX-Target violation-log)", stats("d"), bodies["d"], sent("d"))
    line("(e) ceiling: GET /api/violations?limit=15 (JSON)", stats("e"), bodies["e"], sent("e"))
    line("(f) ceiling: the chart's bare rollup query (pool, no HTTP)", stats("f"))
    # The gzip answer decodes to the bytes its tag was made from (the identity answer's, when
    # the chart has not moved on between the two reads).
    same = (
        tags["a+gz"].removeprefix("W/") == f'"{hashlib.blake2b(bodies["a+gz"], digest_size=16).hexdigest()}"'
    )
    c6, c9 = sorted(cpu[6]), sorted(cpu[9])
    print(
        f"== (a) on the wire: {len(wire['a']):,} B identity -> {len(wire['a+gz']):,} B gzip "
        f"({len(wire['a']) / len(wire['a+gz']):.1f}x smaller; decodes to the bytes its ETag names: "
        f"{'yes' if same else 'NO'}); server time {stats('a')[0]:.1f} -> {stats('a+gz')[0]:.1f} ms (median)"
    )
    print(
        f"== gzip of (a)'s {len(bodies['a']):,} B by itself, CPU median / max of {runs}: level 6 (the "
        f"app's) {statistics.median(c6):.2f} / {c6[-1]:.2f} ms -> {sizes[6]:,} B; level 9 "
        f"{statistics.median(c9):.2f} / {c9[-1]:.2f} ms -> {sizes[9]:,} B"
    )
    if not same or encodings["a+gz"] != "gzip" or encodings["c"] != "none":
        raise SystemExit("the chart panel is not gzip, or the page (with its CSRF token) is")
    a, e, f = stats("a")[0], stats("e")[0], stats("f")[0]
    kb = len(bodies["a"]) / 1000
    print(
        f"== (a) is {a / e:.1f}x (e) and {a / f:.1f}x (f); target < 100 KB and < 50 ms: "
        f"{kb:.1f} KB {'met' if kb < 100 else 'NOT met'}, {a:.1f} ms {'met' if a < 50 else 'NOT met'}"
    )
    if save is not None:
        for name, body in bodies.items():
            (save / f"{name}.html").write_bytes(body)
    html = bodies["a"].decode()
    check_marks(html, seeded, start)
    page = bodies["c"].decode()
    chart_trigger, log_trigger = triggers(page, "chart-panel"), triggers(page, "violation-log")
    print(f"== idle tab: chart panel hx-trigger = {chart_trigger!r}")
    print(f"== idle tab: violation log hx-trigger = {log_trigger!r}")
    # What the page asks of the server while it is open and nothing is clicked: the fallback
    # polls run only while its event stream is down (static/live.js), the chart re-reads on its
    # model's stored probes no more often than its pace.
    quiet = all(LIVE_FALLBACK_FILTER in t for t in (chart_trigger, log_trigger))
    found = re.search(r"throttle:(\d+)s", chart_trigger)
    pace_s = int(found.group(1)) if found else 0
    per_minute = stats("a")[0] * 60 / pace_s if pace_s else float("nan")
    print(
        f"== idle tab, event stream open: fallback polls {'stand still' if quiet else 'RUN'}; "
        f"no new data: 0 requests; new probes of its model: one chart re-read per {pace_s} s at "
        f"most ({per_minute:.0f} ms of server time a minute)"
    )
    if not quiet:
        raise SystemExit("an idle tab polls while its event stream is open")
    asked = ", ".join(f"{k} {v}" for k, v in encodings.items() if k != "a")
    print(f"== content-encoding with gzip accepted: {asked} (the page holds the CSRF token: never gzip)")


async def run(every_s: float, n_violations: int, runs: int, save: Path | None = None) -> None:
    print_machine(("fastapi", "asyncpg", "msgspec"))
    with tempfile.TemporaryDirectory(prefix="llmscope-chart-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        bus = EmbeddedNats(Path(tmp) / "nats", free_port())
        pg.start()
        bus.start()
        try:
            async with running_api(pg.url(), bus.url) as (app, client):
                rt = app.state.runtime
                assert isinstance(rt, Runtime)
                pool = rt.store.pool
                started = time.perf_counter()
                seeded = await seed(pool, bus.url, every_s, n_violations)
                print(
                    f"== seeded in {time.perf_counter() - started:.0f} s: {seeded.telemetry:,} probes "
                    f"({seeded.per_chart:,} per chart, {len(PROMPTS)} prompts x {len(TARGETS)} targets, "
                    f"one every {every_s:g} s), {seeded.minutes:,} minute rollups, "
                    f"{len(seeded.violations):,} violations on the chart and {seeded.other_violations:,} "
                    f"on its other charts, and {HISTORY_DAYS} days of rollups and violations before "
                    f"({seeded.all_violations:,} violations in all), KV record {seeded.record_bytes:,} B "
                    "(armed by the engine)"
                )
                await measure(app, client, pool, seeded, runs, save)
        finally:
            bus.stop()
            pg.stop()
    print(f"== load after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a probe every 10 s, 2,000 violations, 5 runs")
    parser.add_argument("--runs", type=int, default=0, help="runs per figure (default 30, quick 5)")
    parser.add_argument("--save", type=Path, help="write each answer's body into this folder")
    opts = parser.parse_args()
    runs = opts.runs or (5 if opts.quick else 30)
    if opts.quick:
        asyncio.run(run(every_s=10.0, n_violations=2000, runs=runs, save=opts.save))
    else:
        asyncio.run(run(every_s=2.0, n_violations=2400, runs=runs, save=opts.save))


if __name__ == "__main__":
    run_alone(main, __file__)
