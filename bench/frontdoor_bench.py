"""Front-door benchmark: the API process's CPU per one-event ``POST /api/stats``, persister off.

Not a test: it prints figures. ``stack_bench.py`` measures the API with its in-process persister,
so its per-POST figure mixes the front door with the writes to Postgres; here the API runs with
``LLMSCOPE_PERSISTER=false`` and what is left is the HTTP front door (middleware, auth, routing,
validation) and the awaited JetStream publish: a 202 still means JetStream acknowledged the event.

Each ``--tree NAME=PATH`` is a checkout with its own ``.venv`` (``make install``): a clone of
main as the baseline and this worktree, say. Each tree's API is its own process (its own
database on one embedded PostgreSQL, one embedded nats-server for all), beside a bare FastAPI
endpoint (``stack_bench.BARE_APP``: reads the body, answers 202). Every round posts the same
events at each rate to every target in turn, the order rotated each round, so the figures to
compare come from the same minutes; the load average is printed with each round, and the
median over the rounds at the end, with each target's ratio to the bare endpoint.

Usage: ``python bench/frontdoor_bench.py [--quick] [--tree base=/tmp/doorbase] [--tree this=.]
[--rates 100,1000] [--seconds 5] [--rounds 3]`` (``--quick``: 2 s, 1 round; ``make bench`` runs
it on this tree alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec

from llmscope.proto import codec
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The sibling benchmark, found by the path above (as traffic_centre.py finds traffic_bench).
from bench.machine import print_machine
from bench.one_at_a_time import run_alone
from bench.stack_bench import (
    BARE_APP,
    KEY,
    Component,
    cpu_used,
    percentile,
    post_at_rate,
    telemetry,
    wait_http,
)

IDLE_S = 3.0


def start_api(tree: Path, nats_url: str, database_url: str, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        LLMSCOPE_API_KEY=KEY,
        LLMSCOPE_HOST="127.0.0.1",
        LLMSCOPE_PORT=str(port),
        LLMSCOPE_PERSISTER="false",
        PYTHONUNBUFFERED="1",
    )
    python = tree / ".venv" / "bin" / "python"
    proc = subprocess.Popen(
        [str(python), "-m", "llmscope.stack.cli", "api"],
        env=env,
        cwd=tree,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return f"http://127.0.0.1:{port}", proc


async def measure(
    targets: dict[str, tuple[str, int]], rates: Sequence[int], seconds: float, rounds: int
) -> None:
    cpu_ms: dict[tuple[str, int], list[float]] = {}
    p99: dict[tuple[str, int], list[float]] = {}
    idle: dict[str, list[float]] = {}
    names = list(targets)
    serial = 0
    # Idle connections are dropped before uvicorn's keep-alive (5 s) ends them: reusing one the
    # server is closing fails the POST ("Can not write request body").
    connector = aiohttp.TCPConnector(limit=128, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for name, (url, _) in targets.items():
            # The APIs' readiness (NATS and Postgres connected); the bare endpoint answers 405.
            await wait_http(f"{url}/readyz" if name != "bare" else f"{url}/api/stats")
            # Warm-up: imports, the first publish, the pool.
            bodies = [(f"{name}-warm-{i}", _body(f"{name}-warm-{i}", i)) for i in range(200)]
            await post_at_rate(session, f"{url}/api/stats", bodies, 200)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            load = os.getloadavg()
            print(f"\n-- round {r + 1}/{rounds}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            # No traffic at all: each process's own timers, the part of a per-POST figure that
            # shrinks as the rate grows.
            procs = {name: Component(name, pid) for name, (_, pid) in targets.items()}
            before_idle = {name: c.cpu() for name, c in procs.items()}
            await asyncio.sleep(IDLE_S)
            for name, c in procs.items():
                ms_per_s = 1000 * cpu_used(before_idle[name], c.cpu()) / IDLE_S
                idle.setdefault(name, []).append(ms_per_s)
            print("idle     " + "  ".join(f"{name} {idle[name][-1]:.1f} ms/s" for name in names))
            for rate in rates:
                n = int(rate * seconds)
                for name in order:
                    url, pid = targets[name]
                    serial += 1
                    bodies = [(f"{name}-{serial}-{i}", _body(f"{name}-{serial}-{i}", i)) for i in range(n)]
                    proc = Component(name, pid)
                    before = proc.cpu()
                    _, trips, elapsed = await post_at_rate(session, f"{url}/api/stats", bodies, rate)
                    used = cpu_used(before, proc.cpu())
                    cpu_ms.setdefault((name, rate), []).append(1000 * used / n)
                    p99.setdefault((name, rate), []).append(1000 * percentile(trips, 99))
                    print(
                        f"{name:<8} {rate:>5}/s asked, {n / elapsed:>6.0f}/s achieved  "
                        f"CPU {1000 * used / n:.3f} ms/POST  round trip p50 "
                        f"{1000 * percentile(trips, 50):.1f} p99 {1000 * percentile(trips, 99):.1f} ms"
                    )
    load = os.getloadavg()
    print(f"\n== median of {rounds} rounds (load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    print("idle     " + "  ".join(f"{name} {statistics.median(idle[name]):.1f} ms/s" for name in names))
    for rate in rates:
        bare = statistics.median(cpu_ms[("bare", rate)])
        for name in names:
            ms = statistics.median(cpu_ms[(name, rate)])
            print(
                f"{name:<8} {rate:>5}/s  CPU {ms:.3f} ms/POST ({ms / bare:.1f} x bare)  "
                f"p99 {statistics.median(p99[(name, rate)]):.1f} ms"
            )


def _body(event_id: str, i: int) -> bytes:
    event = next(telemetry(1, i))
    return codec.encode(msgspec.structs.replace(event, id=event_id))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout with .venv")
    parser.add_argument("--rates", default="100,1000", help="POSTs per second, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a short run: 2 s per rate and target, 1 round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per rate and target (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(Path(__file__).resolve().parent.parent)}
    rates = [int(r) for r in args.rates.split(",") if r]
    print_machine(("fastapi", "uvicorn", "nats-py", "msgspec", "uvloop"), nats_server=True)
    with tempfile.TemporaryDirectory(prefix="llmscope-frontdoor-bench-") as tmp_name:
        tmp = Path(tmp_name)
        nats_server = EmbeddedNats(tmp / "nats", free_port())
        postgres = EmbeddedPostgres(tmp / "pg", free_port())
        procs: list[subprocess.Popen[bytes]] = []
        try:
            nats_url = nats_server.start()
            postgres.start()
            targets: dict[str, tuple[str, int]] = {}
            for name, path in trees.items():
                database_url = postgres.create_database(f"frontdoor_{name}")
                url, proc = start_api(Path(path).resolve(), nats_url, database_url, tmp / f"{name}.log")
                procs.append(proc)
                targets[name] = (url, proc.pid)
            bare_port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-c", BARE_APP, str(bare_port)],
                stdout=(tmp / "bare.log").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(bare)
            targets["bare"] = (f"http://127.0.0.1:{bare_port}", bare.pid)
            asyncio.run(measure(targets, rates, seconds, rounds))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            postgres.stop()
            nats_server.stop()
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
