"""Whole-stack benchmark: CPU per ingested event per process, and posted -> stored latency.

Not a test: it prints figures. It starts the stack as ``llmscope up`` does, each component its own
process: an embedded nats-server (JetStream, file storage) and PostgreSQL (fsync on), the API
(with its in-process persister), the SPC engine and the alerter. Then it posts telemetry over
HTTP, one event per ``POST /api/stats`` (as an external prober does), at a fixed rate, and
measures:

- CPU seconds per ingested event of each process (psutil; Postgres is the postmaster and every
  backend but the benchmark's own connection, its NOTIFY listener), between the first post and
  the moment every consumer has caught up (nothing pending or unacknowledged on any durable
  consumer), so the work an event causes downstream
  is counted, and so is whatever the processes do on their own meanwhile (timers, snapshots);
- posted -> stored: from just before the POST is sent to the row's commit timestamp
  (``track_commit_timestamp`` on in the benchmark's cluster; ``pg_xact_commit_timestamp(xmin)``
  of each row, Postgres's wall clock mapped onto this process's monotonic clock by an offset
  measured in the same run, its uncertainty printed), p50 / p95 / p99; beside it, posted ->
  NOTIFY seen: until this process's listener received the row's NOTIFY (a trigger the benchmark
  adds; delivered after the commit's flush), which adds the flush and this process's own wake-up;
- the baseline, in the same run at the same rate: a bare FastAPI endpoint (uvicorn, the same
  event loop as the API, reads the body and answers 202), its CPU per request and its round
  trip. The whole stack's CPU is printed as a ratio to it.

The engine's charts are armed first (``LLMSCOPE_SPC_BASELINE_N``, 10 models), so the figures
include armed charts. The benchmark client runs in this process and is not counted.

The probe rates' windows are steady states of the engine's chart state (``--steady``, the default
without ``--quick``): each starts right after a write of the state and lasts one cycle of it and
2 s (122 s at 100/s, 17 s at 1,000/s and 5,000/s), so a window holds one write, as often as a
steady state pays it (a 10 s window held a whole write at 100/s and none at 1,000/s). The
ceiling's feed is ``--seconds`` long at the same rate.

Then lists of 1000 events (4 POSTs in flight): the API's batched ingest rate and the whole
stack's CPU per event that way.

Before the rates, ``--idle S`` seconds with no traffic at all: each process's CPU per second by
the clock (timers, snapshots, pull requests, renewals), the part of the per-event figure that
shrinks as the rate grows.

Usage: ``python bench/stack_bench.py [--quick] [--rates 100,1000] [--seconds S] [--batched N] [--idle S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import aiohttp
import asyncpg
import nats
import psutil
from nats.js.api import StorageType

from llmscope.config.env import Env
from llmscope.prober.settings import PUBLISH_LINGER_MS
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.settings import SpcSettings
from llmscope.stack.embedded import NATS_MAX_PROCS, EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine
from bench.nats_breakdown import BENCH_INBOX, ServerCounts, Sniffer, print_breakdown, settle
from bench.one_at_a_time import run_alone
from bench.pg_breakdown import PgBreakdown

KEY = "bench-key-0123456789abcdef"
MODELS = 10
BASELINE_N = 100
AVAILABILITY_BASELINE_N = 200
"""Probes an availability chart's baseline takes (the engine's default, ``AvailabilityConfig``)."""
SERVICES = ("api", "spc-engine", "alerter")

NOTIFY_SQL = """
CREATE OR REPLACE FUNCTION bench_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
PERFORM pg_notify('bench_stored', NEW.id); RETURN NULL;
END $$;
CREATE TRIGGER bench_stored AFTER INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION bench_stored();
"""

BARE_APP = """
import sys, uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI()
@app.post("/api/stats")
async def post(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": "x"}, status_code=202)
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
uvicorn.Server(config).run()
"""


# --------------------------------------------------------------------------------------------
# Machine


# --------------------------------------------------------------------------------------------
# Processes and their CPU


@dataclass
class Component:
    """One measured process (or a process tree: Postgres)."""

    name: str
    pid: int
    tree: bool = False
    exclude: set[int] = field(default_factory=set)
    """Processes of the tree that are not the component's (the benchmark's own Postgres backend)."""

    def cpu(self) -> dict[int, float]:
        """CPU seconds of each live process of the component, by pid."""
        out: dict[int, float] = {}
        try:
            root = psutil.Process(self.pid)
            procs = [root, *(root.children(recursive=True) if self.tree else [])]
        except psutil.NoSuchProcess:
            return out
        for p in procs:
            if p.pid in self.exclude:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    def wakeups(self) -> int:
        """Voluntary context switches of every thread of every process of the component: each is
        a thread going to sleep (an epoll wait, a futex, a read) and so, for an idle loop, one
        wake-up later. Counted from ``/proc`` (psutil's count is the main thread's only)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *(root.children(recursive=True) if self.tree else [])]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            if p.pid in self.exclude:
                continue
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{p.pid}/task").iterdir():
                    with contextlib.suppress(OSError):
                        for line in (task / "status").read_text().splitlines():
                            if line.startswith("voluntary_ctxt_switches:"):
                                total += int(line.split()[1])
        return total


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU between two snapshots; a process started in between counts from zero (one that ended
    in between is lost: Postgres backends of the API's pool live as long as the pool)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


COMMIT_TIMESTAMPS = {"track_commit_timestamp": "on"}
"""Each transaction's commit time kept, read back as ``pg_xact_commit_timestamp(xmin)``."""


class Statements:
    """``--statements``: Postgres's per-statement counts and times (pg_stat_statements, loaded
    by the cluster before it starts), reset before a phase and printed per event after it: what
    each statement costs the backends, beside the CPU of the whole cluster."""

    SETTINGS: ClassVar[dict[str, str]] = {
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track": "all",
        "pg_stat_statements.track_planning": "on",
    }

    @staticmethod
    async def reset(dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()

    @staticmethod
    async def report(dsn: str, n: int, top: int = 12) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                """SELECT calls, total_exec_time, total_plan_time, rows,
                          regexp_replace(query, '\\s+', ' ', 'g') AS q
                   FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
                   ORDER BY total_exec_time + total_plan_time DESC"""
            )
        finally:
            await conn.close()
        total = sum(r["total_exec_time"] + r["total_plan_time"] for r in rows)
        calls = sum(r["calls"] for r in rows)
        print(
            f"  statements: {calls / n:.3f} per event, {1000 * total / n:.0f} us per event executing"
            " and planning (pg_stat_statements, wall time in the backends; a COMMIT's flush apart)"
        )
        print(f"  {'calls/ev':>9} {'exec us/ev':>10} {'plan us/ev':>10} {'us/call':>8}  statement")
        for r in rows[:top]:
            each = 1000 * (r["total_exec_time"] + r["total_plan_time"]) / max(1, r["calls"])
            print(
                f"  {r['calls'] / n:>9.3f} {1000 * r['total_exec_time'] / n:>10.1f}"
                f" {1000 * r['total_plan_time'] / n:>10.1f} {each:>8.0f}  {r['q'][:110]}"
            )


@dataclass
class Stack:
    tmp: Path
    own_persister: bool = False
    """The persister as its own process (``llmscope persister``) beside an API started with
    LLMSCOPE_PERSISTER=false, instead of in the API's process."""
    statements: bool = False
    """Load pg_stat_statements and print each probe phase's statements per event."""
    monitor_port: int | None = None
    """nats-server's monitoring port (``--nats-breakdown``), None: none."""
    sniffer: Sniffer | None = None
    nats_procs: int = NATS_MAX_PROCS
    """The embedded nats-server's GOMAXPROCS (``--nats-procs``), as ``llmscope up`` runs it."""
    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    database_url: str = ""
    api_url: str = ""
    bare_url: str = ""
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        self.nats = EmbeddedNats(
            self.tmp / "nats", free_port(), monitor_port=self.monitor_port, max_procs=self.nats_procs
        )
        nats_url = self.nats.start()
        settings = COMMIT_TIMESTAMPS | (Statements.SETTINGS if self.statements else {})
        self.postgres = EmbeddedPostgres(self.tmp / "pg", free_port(), settings=settings)
        self.postgres.start()
        self.database_url = self.postgres.create_database("llmscope")
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env.update(
            NATS_URL=nats_url,
            DATABASE_URL=self.database_url,
            LLMSCOPE_API_KEY=KEY,
            LLMSCOPE_HOST="127.0.0.1",
            LLMSCOPE_PORT=str(port),
            LLMSCOPE_SPC_BASELINE_N=str(BASELINE_N),
            LLMSCOPE_SPC_HEALTH_PORT="0",
            LLMSCOPE_ALERTER_HEALTH_PORT="0",
            LLMSCOPE_PERSISTER_HEALTH_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        launcher = [sys.executable, "-m", "llmscope.stack.cli"]
        services: tuple[str, ...] = SERVICES
        if self.own_persister:
            env["LLMSCOPE_PERSISTER"] = "false"
            services = (*SERVICES, "persister")
        for name in services:
            log = (self.tmp / f"{name}.log").open("ab")
            argv = [*launcher, name] if name != "persister" else ["-m", "llmscope.api.persister"]
            if name == "persister":
                argv = [sys.executable, *argv]
            self.children[name] = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        bare_port = free_port()
        self.bare_url = f"http://127.0.0.1:{bare_port}"
        log = (self.tmp / "bare.log").open("ab")
        self.children["bare"] = subprocess.Popen(
            [sys.executable, "-c", BARE_APP, str(bare_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def monitor(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def postmaster_pid(self) -> int:
        return int((self.tmp / "pg" / "postmaster.pid").read_text().split()[0])

    def components(self) -> list[Component]:
        assert self.nats is not None
        assert self.nats._proc is not None
        pg_pid = self.postmaster_pid()
        out = [Component(name, proc.pid) for name, proc in self.children.items() if name != "bare"]
        out.append(Component("nats-server", self.nats._proc.pid))
        out.append(Component("postgres (all backends)", pg_pid, tree=True))
        return out

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()


# --------------------------------------------------------------------------------------------
# Load


def telemetry(n: int, start: int) -> Iterator[TelemetryEvent]:
    """Complete events (type, id and ts given) over MODELS models, latency varying a little."""
    for i in range(start, start + n):
        m = i % MODELS
        latency = 400.0 + 40.0 * math.sin(i * 0.7) + 5.0 * (i % 13)
        yield TelemetryEvent(
            id=f"stack-{i:08d}",
            ts=datetime.now(UTC),
            provider="ollama",
            model=f"bench-{m:02d}:8b",
            target="local",
            host="gpu-1",
            prober="bench",
            prompt_id="simple",
            prompt_hash="ab" * 32,
            streaming=True,
            latency_ms=latency,
            ttft_ms=latency / 5,
            eval_count=64,
            tokens_per_s=50.0 + (i % 7),
            cpu_percent=12.5,
            memory_percent=40.0,
        )


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    cpu: dict[str, float]
    latencies: list[float]
    """Posted -> the row's commit timestamp."""
    writing: list[float] = field(default_factory=list)
    """Of each latency, the part from the storing transaction's start to its commit."""
    seen: list[float] = field(default_factory=list)
    """Posted -> the row's NOTIFY received by this process."""
    clock: ClockOffset | None = None
    answered: list[float] = field(default_factory=list)
    """POST round trips (202: published and acked by JetStream)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def post_at_rate(
    session: aiohttp.ClientSession, url: str, bodies: Sequence[tuple[str, bytes]], rate: float
) -> tuple[dict[str, float], list[float], float]:
    """POST each body at ``rate`` per second (open loop: late posts go at once); returns the send
    time of each id, each request's round trip, and the seconds from first send to last answer."""
    loop = asyncio.get_running_loop()
    sent: dict[str, float] = {}
    trips: list[float] = []
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def one(event_id: str, body: bytes) -> None:
        t = time.perf_counter()
        sent[event_id] = t
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 202:
                raise RuntimeError(f"POST answered {r.status}")
        trips.append(time.perf_counter() - t)

    t0 = loop.time()
    started = time.perf_counter()
    tasks = []
    for i, (event_id, body) in enumerate(bodies):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(event_id, body)))
    await asyncio.gather(*tasks)
    return sent, trips, time.perf_counter() - started


async def caught_up(nats_url: str, within: float = 120.0) -> None:
    """Wait until no durable consumer of any stream has anything pending or unacknowledged
    (asked every 0.2 s: these requests are a small part of nats-server's CPU in a phase)."""
    nc = await nats.connect(nats_url, inbox_prefix=BENCH_INBOX)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            behind = 0
            for stream in await js.streams_info():
                for consumer in await js.consumers_info(stream.config.name or ""):
                    behind += (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
            if behind == 0:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("consumers did not catch up")
    finally:
        await nc.close()


async def wait_http(url: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as r:
                    if r.status in (200, 404, 405):
                        return
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{url} did not answer")


@dataclass(frozen=True)
class ClockOffset:
    """Postgres's wall clock minus this process's ``time.perf_counter`` (one host, two clocks):
    from the quickest of several ``SELECT clock_timestamp()`` round trips. Postgres read its clock
    somewhere within the round trip, so the offset is known to within half of it."""

    offset: float
    uncertainty: float

    @classmethod
    async def measure(cls, conn: asyncpg.Connection, tries: int = 20) -> ClockOffset:
        best_trip, offset = math.inf, 0.0
        for _ in range(tries):
            t0 = time.perf_counter()
            pg = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
            t1 = time.perf_counter()
            if t1 - t0 < best_trip:
                best_trip, offset = t1 - t0, pg - (t0 + t1) / 2
        return cls(offset, best_trip / 2)

    def spanning(self, after: ClockOffset) -> ClockOffset:
        """One offset for a phase measured before (self) and after it: their mean, uncertain by
        the larger reading's uncertainty and half their difference (the wall clock's slew)."""
        drift = abs(after.offset - self.offset)
        return ClockOffset(
            (self.offset + after.offset) / 2, max(self.uncertainty, after.uncertainty) + drift / 2
        )


class Stored:
    """Rows Postgres reported stored: their NOTIFY (sent after the commit's flush) with the time
    this process received it, and, read back afterwards, their commit timestamps."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        """When this process received each row's NOTIFY (``time.perf_counter``)."""
        self.committed: dict[str, float] = {}
        """Each row's commit timestamp, mapped onto ``time.perf_counter``."""
        self.writing: dict[str, float] = {}
        """Seconds from the storing transaction's start (the row's ``received_at``, Postgres'
        ``now()``) to its commit: the write and the commit, on Postgres's clock alone."""
        self._expected: set[str] = set()
        self._done = asyncio.Event()

    def on_notify(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        event_id = str(payload)
        self.at[event_id] = time.perf_counter()
        self._expected.discard(event_id)
        if not self._expected:
            self._done.set()

    def expect(self, ids: Sequence[str]) -> None:
        self._expected.update(i for i in ids if i not in self.at)
        if self._expected:
            self._done.clear()

    async def wait(self, within: float = 120.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), within)

    async def read_commits(self, conn: asyncpg.Connection, ids: Sequence[str], clock: ClockOffset) -> None:
        """Read the rows' commit timestamps (Postgres takes one as it writes the commit record,
        before flushing it) and their transactions' start, and map them onto this process's clock."""
        rows = await conn.fetch(
            """SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed,
                      extract(epoch FROM received_at)::float8 AS began
               FROM telemetry WHERE id = ANY($1::text[])""",
            list(ids),
        )
        for r in rows:
            if r["committed"] is None:
                continue  # track_commit_timestamp was off when it committed
            self.committed[r["id"]] = r["committed"] - clock.offset
            self.writing[r["id"]] = r["committed"] - r["began"]


async def idle(components: Sequence[Component], seconds: float, stack: Stack | None = None) -> None:
    """CPU of each process per second with no traffic at all (charts armed, every consumer caught
    up): what the stack costs by the clock, whatever the rate (timers, snapshots, pull requests,
    lease renewals, member announcements)."""
    sniffer = stack.sniffer if stack is not None else None
    if sniffer is not None:
        assert stack is not None
        counts0 = ServerCounts.read(stack.monitor)
        sniffer.reset()
        sniffer.counting = True
    before = {c.name: c.cpu() for c in components}
    woke = {c.name: c.wakeups() for c in components}
    await asyncio.sleep(seconds)
    after = {c.name: c.cpu() for c in components}
    woke = {c.name: c.wakeups() - woke[c.name] for c in components}
    if sniffer is not None:
        assert stack is not None
        await settle()
        sniffer.counting = False
        own = +sniffer.own
        print_breakdown(
            "idle", counts0, ServerCounts.read(stack.monitor), sniffer.reset(), own, seconds, "second"
        )
    print(f"\n== idle {seconds:g} s (no traffic, charts armed)")
    print(f"{'process':<32} {'CPU ms/s':>10} {'wake-ups/s':>11}")
    total = 0.0
    for c in components:
        used = cpu_used(before[c.name], after[c.name])
        total += used
        print(f"{c.name:<32} {1000 * used / seconds:>10.1f} {woke[c.name] / seconds:>11.0f}")
    print(f"{'whole stack':<32} {1000 * total / seconds:>10.1f} {sum(woke.values()) / seconds:>11.0f}")


async def run(
    stack: Stack,
    rates: Sequence[int],
    seconds: float,
    batch_events: int,
    idle_s: float = 0.0,
    probe_rates: Sequence[int] = (),
    probe_models: int = 200,
    steady: bool = True,
) -> None:
    assert stack.nats is not None
    await wait_http(f"{stack.api_url}/healthz")
    await wait_http(f"{stack.bare_url}/api/stats")
    conn = await asyncpg.connect(stack.database_url)
    stored = Stored()
    # The API ran its migrations before answering /healthz.
    await conn.execute(NOTIFY_SQL)
    await conn.add_listener("bench_stored", stored.on_notify)
    components = stack.components()
    # This connection's backend is the benchmark's (the NOTIFY listener, woken by every commit,
    # and the clock and commit-time queries), not the stack's: not counted, as this process is not.
    # The trigger's own work is in the persister's backend and is counted.
    mine = await conn.fetchval("SELECT pg_backend_pid()")
    for c in components:
        if c.tree:
            c.exclude.add(mine)
    api = f"{stack.api_url}/api/stats"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    next_id = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:
        # Arm every chart first (not measured): BASELINE_N points per model, in lists of 100.
        warm = list(telemetry(MODELS * (BASELINE_N + 20), next_id))
        next_id += len(warm)
        for i in range(0, len(warm), 100):
            body = b"[" + b",".join(codec.encode(e) for e in warm[i : i + 100]) + b"]"
            async with session.post(api, data=body, headers=headers) as r:
                assert r.status == 202, await r.text()
        await caught_up(stack.nats.url)
        if stack.sniffer is not None:
            await stack.sniffer.start(stack.nats.url)
        if probe_rates:
            await probe_phases(
                stack, components, stored, conn, probe_rates, seconds, probe_models, steady=steady
            )
        if idle_s > 0:
            await idle(components, idle_s, stack)
        for rate in rates:
            n = max(1, int(rate * seconds))
            events = list(telemetry(n, next_id))
            next_id += n
            bodies = [(e.id, codec.encode(e)) for e in events]
            stored.expect([e.id for e in events])
            clock0 = await ClockOffset.measure(conn)
            before = {c.name: c.cpu() for c in components}
            client0 = sum(psutil.Process().cpu_times()[:2])
            sent, answered, elapsed = await post_at_rate(session, api, bodies, rate)
            client_cpu = sum(psutil.Process().cpu_times()[:2]) - client0
            await stored.wait()
            await caught_up(stack.nats.url)
            after = {c.name: c.cpu() for c in components}
            clock = clock0.spanning(await ClockOffset.measure(conn))
            await stored.read_commits(conn, list(sent), clock)
            # The machine's share left to the stack: this process (the client and the NOTIFY
            # listener, not counted above) and the load average as the phase ended.
            load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
            print(
                f"\n(bench client {1000 * client_cpu / n:.3f} ms CPU per POST while posting;"
                f" load average {load})"
            )
            latencies = [stored.committed[i] - t for i, t in sent.items() if i in stored.committed]
            seen = [stored.at[i] - t for i, t in sent.items() if i in stored.at]
            cpu = {c.name: cpu_used(before[c.name], after[c.name]) for c in components}
            writing = [stored.writing[i] for i in sent if i in stored.committed]
            whole = Phase(f"{rate}/s", n, elapsed, cpu, latencies, writing, seen, clock, answered)
            # The baseline: the bare endpoint, the same bodies at the same rate.
            bare = Component("bare FastAPI endpoint", stack.children["bare"].pid)
            b0 = bare.cpu()
            _, trips, b_elapsed = await post_at_rate(session, f"{stack.bare_url}/api/stats", bodies, rate)
            report(whole, Phase(f"{rate}/s", n, b_elapsed, {bare.name: cpu_used(b0, bare.cpu())}, trips))
        if batch_events:
            await batched(stack, session, components, stored, conn, next_id, batch_events)
    await conn.close()
    if stack.sniffer is not None:
        await stack.sniffer.stop()


async def batched(
    stack: Stack,
    session: aiohttp.ClientSession,
    components: Sequence[Component],
    stored: Stored,
    conn: asyncpg.Connection,
    first_id: int,
    n: int,
) -> None:
    """Lists of 1000 events, 4 POSTs in flight: the API's batched ingest rate (202 = in
    JetStream) and the whole stack's CPU per event until everything is stored and charted."""
    assert stack.nats is not None
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    events = list(telemetry(n, first_id))
    bodies = [
        b"[" + b",".join(codec.encode(e) for e in events[i : i + 1000]) + b"]" for i in range(0, n, 1000)
    ]
    stored.expect([e.id for e in events])
    gate = asyncio.Semaphore(4)

    async def one(body: bytes) -> None:
        async with gate, session.post(f"{stack.api_url}/api/stats", data=body, headers=headers) as r:
            assert r.status == 202, await r.text()

    clock0 = await ClockOffset.measure(conn)
    before = {c.name: c.cpu() for c in components}
    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    accepted = time.perf_counter() - t0
    await stored.wait()
    await caught_up(stack.nats.url)
    after = {c.name: c.cpu() for c in components}
    await stored.read_commits(conn, [e.id for e in events], clock0.spanning(await ClockOffset.measure(conn)))
    stored_s = max(stored.committed[e.id] for e in events if e.id in stored.committed) - t0
    print(f"\n== {n:,} events in lists of 1000, 4 POSTs in flight")
    print(f"accepted (202, in JetStream)      {n / accepted:>10,.0f} events/s")
    print(f"stored (last row committed)       {n / stored_s:>10,.0f} events/s")
    total = 0.0
    for c in components:
        cpu = cpu_used(before[c.name], after[c.name])
        total += cpu
        print(f"{c.name:<32} {cpu:>8.2f} s {1000 * cpu / n:>8.3f} ms/event")
    print(f"{'whole stack':<32} {total:>8.2f} s {1000 * total / n:>8.3f} ms/event")


# --------------------------------------------------------------------------------------------
# Probe events: published straight to JetStream, as probers do

FEED = str(Path(__file__).with_name("probe_feed.py"))
CEILING_STREAM = "BENCH_CEILING"
STATE_STREAM = f"KV_{subjects.SPC_STATE_BUCKET}"
CEILING_SUBJECTS = "bench.ceiling"
PROBER_RATE = 250
"""Events per second one prober of the feed publishes (500 models at a 2 s interval): the feed
runs ``ceil(rate / PROBER_RATE)`` probers, each with its own connection, outbox and publisher."""


class Feed:
    """One ``probe_feed.py publish`` process: ready, go, done, then its CPU and put times read."""

    live: ClassVar[set[Feed]] = set()
    """Feeds started and not stopped yet (ended if the benchmark fails)."""

    def __init__(self, proc: asyncio.subprocess.Process, times: Path) -> None:
        self.proc = proc
        self.times = times
        self.component = Component("publisher (probers)", proc.pid)

    @classmethod
    async def start(cls, args: Sequence[str], times: Path) -> Feed:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            FEED,
            "publish",
            *args,
            "--times",
            str(times),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        feed = cls(proc, times)
        cls.live.add(feed)
        await feed._line("ready")
        return feed

    async def _line(self, expected: str) -> str:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().strip()
        if not line.startswith(expected):
            raise RuntimeError(f"probe feed said {line!r}, not {expected!r}")
        return line

    async def go(self) -> float:
        """Publish; returns the seconds from the first put to the last event acked by JetStream."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        return float((await self._line("done")).split()[1])

    def put_times(self) -> tuple[dict[str, float], dict[str, float]]:
        """When each event was put into its prober's outbox, and when JetStream acked it."""
        put, acked = {}, {}
        for row in self.times.read_text().splitlines():
            event_id, t_put, t_acked = row.split(" ")
            put[event_id] = float(t_put)
            acked[event_id] = float(t_acked)
        return put, acked

    async def stop(self) -> None:
        Feed.live.discard(self)
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        await self.proc.wait()


async def stream_seqs(url: str) -> dict[str, int]:
    """Each stream's last sequence: what was written to JetStream between two calls (a KV
    bucket's stream counts every put, however few keys it keeps)."""
    nc = await nats.connect(url, inbox_prefix=BENCH_INBOX)
    try:
        return {s.config.name or "": s.state.last_seq for s in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


async def record_sizes(url: str) -> dict[str, float]:
    """Each KV bucket's mean stored record size in bytes (its stream's bytes over its messages:
    history 1, so the live records, each with its subject and headers as JetStream stores it)."""
    nc = await nats.connect(url, inbox_prefix=BENCH_INBOX)
    try:
        return {
            s.config.name or "": s.state.bytes / s.state.messages
            for s in await nc.jetstream().streams_info()
            if (s.config.name or "").startswith("KV_") and s.state.messages
        }
    finally:
        await nc.close()


def print_writes(
    before: dict[str, int], after: dict[str, int], n: int, sizes: dict[str, float] | None = None
) -> None:
    writes = {name: after[name] - before.get(name, 0) for name in after}
    shown = ", ".join(f"{name} {v / n:.2f}" for name, v in sorted(writes.items()) if v)
    print(f"JetStream writes per event: {shown}")
    if sizes:
        # Puts times the bucket's mean record: what the puts carried, roughly (a collecting
        # chart's record is larger than an armed one's).
        kv = {name: writes[name] / n * size for name, size in sorted(sizes.items()) if writes.get(name)}
        parts = ", ".join(
            f"{name} {v / 1000:.1f} KB ({sizes[name] / 1000:.1f} KB a record)" for name, v in kv.items()
        )
        print(f"KV bytes per event: {parts}; all KV {sum(kv.values()) / 1000:.1f} KB")


STEADY_MARGIN_S = 2.0
"""The window runs this much longer than one state cycle, so the write that ends the cycle falls
inside it whatever the jitter."""
SETTLE_CHUNK_S = 2.0
"""Seconds of traffic per step while waiting for the engine's state write before a window."""


def state_cycle_s(rate: float) -> float:
    """Seconds between two writes of the engine's chart state at ``rate`` probe events/s with its
    default settings (``Checkpoints.state_due``): once ``LLMSCOPE_SPC_STATE_EVENTS`` events were
    charted, no sooner than ``..._STATE_INTERVAL_S`` and no later than ``..._MAX_INTERVAL_S``."""
    defaults = SpcSettings()
    by_events = defaults.state_events / rate
    return min(max(by_events, defaults.state_interval_s), defaults.state_max_interval_s)


async def settle_on_state_write(url: str, rate: int, models: int, probers: int, first: int, tmp: Path) -> int:
    """Feed ``rate`` (not measured) until the engine has written its chart state, so the window
    that follows starts right after a write and, one cycle long (:func:`state_cycle_s`), holds
    exactly one: the state's cost is counted as often as it is paid in a steady state. Without
    this a window that is shorter than a cycle holds one write or none by chance (the warm-up
    leaves one due at once, counted against the 1,000 events of a 10 s window at 100/s, and at
    1,000/s none fell in the window). Returns the next event number."""
    chunk = max(1, int(rate * SETTLE_CHUNK_S))
    deadline = time.monotonic() + state_cycle_s(rate) + 30.0
    start = last = (await stream_seqs(url)).get(STATE_STREAM, 0)
    while True:
        seq = (await stream_seqs(url)).get(STATE_STREAM, 0)
        if seq > start and seq == last:
            return first  # a write, over (nothing more came in a chunk's time)
        last = seq
        if time.monotonic() > deadline:
            print(f"(no state write seen while settling at {rate:,}/s: the window may hold none)")
            return first
        args = ["--nats", url, "--rate", str(rate), "--events", str(chunk), "--models", str(models)]
        feed = await Feed.start(
            [*args, "--probers", str(probers), "--first", str(first)], tmp / f"settle-{rate}.times"
        )
        await feed.go()
        await feed.stop()
        first += chunk


def probers_for(rate: float) -> int:
    return max(1, math.ceil(rate / PROBER_RATE))


async def probe_phases(
    stack: Stack,
    components: Sequence[Component],
    stored: Stored,
    conn: asyncpg.Connection,
    rates: Sequence[int],
    seconds: float,
    models: int,
    steady: bool = True,
) -> None:
    """For each rate: the stack fed by probers (published to JetStream, as ``llmscope prober``
    does), then the ceiling in the same minute: the same feed into a plain stream read by a bare
    consumer (nats-py ``fetch``, one AckAll per batch): what nats-server and the publisher cost
    whatever the stack does."""
    assert stack.nats is not None
    url = stack.nats.url
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        name=CEILING_STREAM,
        subjects=[f"{CEILING_SUBJECTS}.>"],
        storage=StorageType.FILE,
        duplicate_window=120,
    )
    await nc.close()
    bare = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, FEED, "consume", "--nats", url, "--stream", CEILING_STREAM],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert bare.stdout is not None
    await asyncio.get_running_loop().run_in_executor(None, bare.stdout.readline)
    bare_c = Component("bare consumer (ceiling)", bare.pid)
    nats_c = next(c for c in components if c.name == "nats-server")
    first = 0
    try:
        # Arm the probed models' charts first (not measured): enough points for the metric
        # charts' baselines and the availability chart's (AvailabilityConfig.baseline_n, 200),
        # and 20 more. A chart still collecting shows its progress, and so changes, every probe.
        warm_n = models * (max(BASELINE_N, AVAILABILITY_BASELINE_N) + 20)
        feed = await Feed.start(
            [
                "--nats",
                url,
                "--rate",
                "1e9",
                "--events",
                str(warm_n),
                "--models",
                str(models),
                "--probers",
                "8",
                "--first",
                str(first),
            ],
            stack.tmp / "warm.times",
        )
        await feed.go()
        await feed.stop()
        first += warm_n
        stored.expect([])
        await caught_up(url, within=600)
        print(
            f"\n== probe events: {models} models, published to JetStream by probers"
            " (the prober's Outbox and Publisher, its linger"
            f" {Env().number('LLMSCOPE_PROBER_PUBLISH_LINGER_MS', PUBLISH_LINGER_MS, min=0, max=1000):g} ms)"
        )
        for rate in rates:
            n = max(1, int(rate * seconds))
            probers = probers_for(rate)
            if steady:
                first = await settle_on_state_write(url, rate, models, probers, first, stack.tmp)
                n = max(n, int(rate * (state_cycle_s(rate) + STEADY_MARGIN_S)))
            common = [
                "--nats",
                url,
                "--rate",
                str(rate),
                "--events",
                str(n),
                "--models",
                str(models),
                "--probers",
                str(probers),
                "--first",
                str(first),
            ]
            first += n
            # The stack.
            feed = await Feed.start(common, stack.tmp / f"probe-{rate}.times")
            seqs = await stream_seqs(url)
            breakdown = None
            if stack.statements:
                await Statements.reset(stack.database_url)
                clients = {c.name: c.pid for c in components if not c.tree} | {"bench": os.getpid()}
                breakdown = PgBreakdown(stack.database_url, stack.postmaster_pid(), clients=clients)
                await breakdown.start()
            if stack.sniffer is not None:
                counts0 = ServerCounts.read(stack.monitor)
                stack.sniffer.reset()
                stack.sniffer.counting = True
            clock0 = await ClockOffset.measure(conn)
            before = {c.name: c.cpu() for c in components}
            woke = {c.name: c.wakeups() for c in components}
            f0 = feed.component.cpu()
            fw0 = feed.component.wakeups()
            elapsed = await feed.go()
            put, acked = feed.put_times()
            stored.expect(list(put))
            await stored.wait()
            await caught_up(url)
            after = {c.name: c.cpu() for c in components}
            woke = {c.name: c.wakeups() - woke[c.name] for c in components}
            if breakdown is not None:
                await breakdown.stop()
            woke["publisher (probers)"] = feed.component.wakeups() - fw0
            clock = clock0.spanning(await ClockOffset.measure(conn))
            await stored.read_commits(conn, list(put), clock)
            publisher_cpu = cpu_used(f0, feed.component.cpu())
            if stack.sniffer is not None:
                await settle()
                stack.sniffer.counting = False
                own = +stack.sniffer.own
                counts1 = ServerCounts.read(stack.monitor)
                print_breakdown(
                    f"{rate:,}/s asked", counts0, counts1, stack.sniffer.reset(), own, n, "probe event"
                )
            seqs_after = await stream_seqs(url)
            sizes = await record_sizes(url)
            await feed.stop()
            cpu = {c.name: cpu_used(before[c.name], after[c.name]) for c in components}
            latencies = [stored.committed[i] - t for i, t in put.items() if i in stored.committed]
            seen = [stored.at[i] - t for i, t in put.items() if i in stored.at]
            writing = [stored.writing[i] for i in put if i in stored.committed]
            # The prober's side: the outbox's queue and the publish round trip.
            publishing = [acked[i] - t for i, t in put.items() if i in stored.committed]
            # The ceiling: the same feed, a plain stream, a bare consumer (it keeps no state, so
            # ``seconds`` of it whatever the stack's window was).
            ceil_n = min(n, max(1, int(rate * seconds)))
            ceil_args = [*common, "--subject-prefix", CEILING_SUBJECTS]
            ceil_args[ceil_args.index("--events") + 1] = str(ceil_n)
            ceil_feed = await Feed.start(ceil_args, stack.tmp / f"ceiling-{rate}.times")
            c_before = {c.name: c.cpu() for c in (nats_c, bare_c, ceil_feed.component)}
            c_woke = {c.name: c.wakeups() for c in (nats_c, bare_c, ceil_feed.component)}
            c_elapsed = await ceil_feed.go()
            await caught_up(url)
            c_after = {c.name: c.cpu() for c in (nats_c, bare_c, ceil_feed.component)}
            for c in (nats_c, bare_c, ceil_feed.component):
                woke[f"{c.name}, ceiling"] = c.wakeups() - c_woke[c.name]
            await ceil_feed.stop()
            ceiling = {name: cpu_used(c_before[name], c_after[name]) for name in c_before}
            report_probe(
                rate,
                n,
                ceil_n,
                probers,
                elapsed,
                cpu,
                publisher_cpu,
                latencies,
                writing,
                publishing,
                seen,
                clock,
                c_elapsed,
                ceiling,
                woke,
            )
            print_writes(seqs, seqs_after, n, sizes)
            if stack.statements:
                await Statements.report(stack.database_url, n)
            if breakdown is not None:
                await breakdown.report(n)
    finally:
        for left in list(Feed.live):
            await left.stop()
        bare.terminate()
        bare.wait(10)


def report_probe(
    rate: int,
    n: int,
    ceil_n: int,
    probers: int,
    elapsed: float,
    cpu: dict[str, float],
    publisher_cpu: float,
    latencies: Sequence[float],
    writing: Sequence[float],
    publishing: Sequence[float],
    seen: Sequence[float],
    clock: ClockOffset,
    ceiling_elapsed: float,
    ceiling: dict[str, float],
    woke: dict[str, int],
) -> None:
    print(
        f"\n== {n:,} probe events, asked {rate:,}/s, published {n / elapsed:,.0f}/s"
        f" by {probers} prober{'s' if probers > 1 else ''}"
    )
    print(
        f"{'process':<32} {'CPU s':>8} {'ms/event':>10} {'wake/ev':>8}"
        "   ceiling (same feed, bare consumer), ms/event, wake-ups/event"
    )
    ceil_ms = {name: 1000 * v / ceil_n for name, v in ceiling.items()}
    for name, v in cpu.items():
        beside = (
            f"   {ceil_ms['nats-server']:.3f}, {woke['nats-server, ceiling'] / ceil_n:.2f}"
            if name == "nats-server"
            else ""
        )
        print(f"{name:<32} {v:>8.2f} {1000 * v / n:>10.3f} {woke[name] / n:>8.2f}{beside}")
    total = sum(cpu.values())
    bare_total = ceil_ms["nats-server"] + ceil_ms["bare consumer (ceiling)"]
    print(
        f"{'whole stack':<32} {total:>8.2f} {1000 * total / n:>10.3f} {sum(woke[k] for k in cpu) / n:>8.2f}"
        f"   {bare_total:.3f}"
        f" (nats-server + bare consumer {ceil_ms['bare consumer (ceiling)']:.3f})"
        f"  = {1000 * total / n / bare_total:.1f} x ceiling"
    )
    print(
        f"{'publisher (probers), apart':<32} {publisher_cpu:>8.2f} {1000 * publisher_cpu / n:>10.3f}"
        f" {woke['publisher (probers)'] / n:>8.2f}"
        f"   {ceil_ms['publisher (probers)']:.3f}  (ceiling published {ceil_n / ceiling_elapsed:,.0f}/s)"
    )
    print(f"bare consumer (ceiling) wake-ups/event {woke['bare consumer (ceiling), ceiling'] / ceil_n:.2f}")
    print_stored("published", latencies, seen, clock, n, "; from the put into the outbox")
    if writing and publishing:
        # Where the time goes: the prober's outbox and publish (acked by JetStream), then the
        # wait until the persister's transaction starts, then the write and COMMIT.
        for label, values in (
            ("  put -> acked by JetStream", publishing),
            (
                "  acked -> transaction start",
                [a - w - p for a, w, p in zip(latencies, writing, publishing, strict=False)],
            ),
            ("  transaction start -> stored", writing),
            (
                "  acked -> stored (the stack's own part)",
                [a - p for a, p in zip(latencies, publishing, strict=False)],
            ),
        ):
            ms = [1000 * v for v in values]
            print(
                f"{label + ' ms, p50 / p95 / p99':<38} {percentile(ms, 50):.1f} / {percentile(ms, 95):.1f}"
                f" / {percentile(ms, 99):.1f}"
            )


def print_stored(
    start: str, committed: Sequence[float], seen: Sequence[float], clock: ClockOffset, n: int, note: str = ""
) -> None:
    """Start -> committed (the row's commit timestamp, taken as the commit record is written,
    before its flush) and start -> NOTIFY seen (after the flush, with the notification's delivery
    and this process's own wake-up). The row is durable somewhere between the two: the first is
    a lower bound, the second an upper one, and the verdict against a target uses the second."""
    for label, values, rows in (
        (f"{start} -> committed", committed, "committed"),
        (f"{start} -> stored (NOTIFY seen)", seen, "seen"),
    ):
        ms = [1000 * v for v in values]
        print(
            f"{label + ' ms, p50 / p95 / p99':<46} {percentile(ms, 50):.1f} / {percentile(ms, 95):.1f}"
            f" / {percentile(ms, 99):.1f}  ({len(ms):,} of {n:,} rows {rows}{note})"
        )
    print(
        f"  (committed: commit timestamps on Postgres's clock, before the commit's flush, mapped"
        f" onto the benchmark's by an offset measured before and after, uncertain by"
        f" +-{1000 * clock.uncertainty:.3f} ms; stored: the row's NOTIFY received, after the flush)"
    )


def report(whole: Phase, bare: Phase) -> None:
    n = whole.events
    bare_ms = 1000 * sum(bare.cpu.values()) / n
    print(f"\n== {n:,} events, one per POST, asked {whole.name}, achieved {whole.rate:,.0f}/s")
    print(f"{'process':<32} {'CPU s':>8} {'ms/event':>10}")
    for name, cpu in whole.cpu.items():
        print(f"{name:<32} {cpu:>8.2f} {1000 * cpu / n:>10.3f}")
    total = sum(whole.cpu.values())
    ratio = 1000 * total / n / bare_ms
    print(f"{'whole stack':<32} {total:>8.2f} {1000 * total / n:>10.3f}  = {ratio:.1f} x bare")
    print(
        f"{'bare FastAPI endpoint (baseline)':<32} {sum(bare.cpu.values()):>8.2f} {bare_ms:>10.3f}"
        f"  ({bare.rate:,.0f}/s achieved)"
    )
    trips = [1000 * v for v in bare.latencies]
    assert whole.clock is not None
    print_stored("posted", whole.latencies, whole.seen, whole.clock, n)
    if whole.writing and whole.answered:
        # Where the time goes: the POST (API + JetStream ack), then the wait until the persister's
        # transaction starts (delivery, its batching wait, the batch before), then the write.
        for label, values in (
            ("  POST answered 202", whole.answered),
            ("  transaction start -> stored", whole.writing),
            (
                "  posted -> transaction start",
                [a - w for a, w in zip(whole.latencies, whole.writing, strict=False)],
            ),
        ):
            ms = [1000 * v for v in values]
            print(
                f"{label + ' ms, p50 / p95 / p99':<38} {percentile(ms, 50):.1f} / {percentile(ms, 95):.1f}"
                f" / {percentile(ms, 99):.1f}"
            )
    print(
        f"bare endpoint round trip ms, p50 / p95 / p99   {percentile(trips, 50):.1f} /"
        f" {percentile(trips, 95):.1f} / {percentile(trips, 99):.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (2 s per rate)")
    parser.add_argument("--rates", default="100,1000", help="events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per rate (default 10)")
    parser.add_argument(
        "--batched", type=int, default=None, help="events posted in lists of 1000 (default 20,000; 0: none)"
    )
    parser.add_argument(
        "--probe-rates",
        default="100,1000,5000",
        help="probe events per second published to JetStream, comma-separated ('': none)",
    )
    parser.add_argument("--models", type=int, default=None, help="probed models (default 200; --quick 50)")
    parser.add_argument(
        "--idle", type=float, default=None, help="seconds of no traffic measured first (default 10; 0: none)"
    )
    parser.add_argument(
        "--nats-breakdown",
        action="store_true",
        help="count NATS messages per probe event by kind and connection (nats-server's monitoring"
        " endpoint and a sniffer on '>': its copies load nats-server, so quote CPU from runs without it)",
    )
    parser.add_argument(
        "--persister",
        choices=("api", "own"),
        default="api",
        help="the persister in the API's process, or its own process (as llmscope up runs it)",
    )
    parser.add_argument(
        "--steady",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each probe rate's window starts after a write of the engine's chart state and lasts"
        " one state cycle (120 s at 100/s, 17 s at 1,000/s and 5,000/s), so the state is counted as"
        " often as it is paid (default on; off with --quick, where windows are --seconds long)",
    )
    parser.add_argument(
        "--nats-procs",
        type=int,
        default=NATS_MAX_PROCS,
        help=f"the nats-server's GOMAXPROCS (default {NATS_MAX_PROCS}, as llmscope up; 0: Go's default)",
    )
    parser.add_argument(
        "--statements", action="store_true", help="print pg_stat_statements per event for each probe rate"
    )
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 10.0)
    batch_events = args.batched if args.batched is not None else (2000 if args.quick else 20_000)
    print_machine(("fastapi", "uvicorn", "nats-py", "asyncpg", "msgspec", "uvloop"), nats_server=True)
    print(f"run          {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, rates {rates}/s, {seconds:g} s each")
    with tempfile.TemporaryDirectory(prefix="llmscope-stack-bench-") as tmp:
        stack = Stack(
            Path(tmp),
            own_persister=args.persister == "own",
            statements=args.statements,
            nats_procs=args.nats_procs,
        )
        if args.nats_breakdown:
            stack.monitor_port = free_port()
            stack.sniffer = Sniffer()
        try:
            stack.start()
            idle_s = args.idle if args.idle is not None else (2.0 if args.quick else 10.0)
            probe_rates = [int(r) for r in args.probe_rates.split(",") if r]
            models = args.models if args.models is not None else (50 if args.quick else 200)
            steady = args.steady if args.steady is not None else not args.quick
            asyncio.run(run(stack, rates, seconds, batch_events, idle_s, probe_rates, models, steady))
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
