"""Acceptance run of the SPC engine against a real inference server (issue 7, "Done when").

Not a test: it runs for about 45 minutes and prints what it measured, with PASS or MISS per
step. It starts an embedded NATS, the prober and the SPC engine (``python -m llmscope.prober``,
``python -m llmscope.spc_engine``) with production SPC settings (1000-point baselines), and
probes two targets serving the same model:

- ``real-main``: an already running llama.cpp server (``--url``, default port 18080), which this
  script loads with 3 concurrent clients in step 3;
- ``real-outage``: a server this script starts itself (``../shared/real-llm/serve.sh`` on
  ``--outage-port``), stops for ``--outage-s`` and starts again in step 4.

Steps: 1. arm (every latency chart and the outage target's availability chart armed); 2. idle
(``--idle-min`` minutes: no critical violation); 3. load (one critical latency episode on
real-main within a few minutes, cleared after the load stops); 4. outage (one AVAILABILITY
critical on real-outage, cleared with the same episode id after the restart).

    .venv/bin/python bench/real_llm_acceptance.py            # the full run
    .venv/bin/python bench/real_llm_acceptance.py --idle-min 2 --load-s 60   # a shorter look

Every violation event is written to ``--events`` (JSON lines) for later reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, NoKeysError

from llmscope.proto import codec, subjects
from llmscope.proto.charts import AVAILABILITY, ChartRecord, decode_record
from llmscope.proto.violation import ViolationEvent
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
# ../shared/real-llm/serve.sh from the main checkout, ../../shared/... from a worktree under it.
SERVE_SH = (
    next(
        (
            p
            for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
            if (p / "real-llm" / "serve.sh").exists()
        ),
        ROOT.parent / "shared",
    )
    / "real-llm"
    / "serve.sh"
)
MAIN, OUTAGE = "real-main", "real-outage"
MODEL = "tiny-llama"
PROMPT = "simple-capital"  # the shortest of the prober's prompts: 16 tokens
LOAD_PROMPT = "Write a long story about a lighthouse keeper and the sea."


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def stamp() -> str:
    return time.strftime("%H:%M:%S")


def say(msg: str) -> None:
    print(f"[{stamp()}] {msg}", flush=True)


@dataclass
class Recorded:
    """One violation event as received, with the run's clock."""

    t: float
    ev: ViolationEvent


@dataclass
class Run:
    """What the script saw: violation events, load averages, phase start times."""

    t0: float = field(default_factory=time.monotonic)
    events: list[Recorded] = field(default_factory=list)
    loadavg: list[tuple[float, float]] = field(default_factory=list)
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def between(self, start: float, end: float, pred: Callable[[ViolationEvent], bool]) -> list[Recorded]:
        return [r for r in self.events if start <= r.t < end and pred(r.ev)]

    def load_between(self, start: float, end: float) -> str:
        xs = [v for t, v in self.loadavg if start <= t < end]
        if not xs:
            return "n/a"
        return f"mean {sum(xs) / len(xs):.2f}, min {min(xs):.2f}, max {max(xs):.2f} ({len(xs)} samples)"


def describe(ev: ViolationEvent) -> str:
    return (
        f"{ev.state:7} {ev.severity:8} {ev.rule:12} {ev.target:11} {ev.metric:14} dir={ev.direction or '-':4}"
        f" dev={ev.deviation_sigma:+.2f} value={ev.value:.1f} episode={ev.episode_id[:12]} {ev.detail}"
    )


def is_critical_open(ev: ViolationEvent) -> bool:
    return ev.state == "open" and ev.severity == "critical"


class OwnServer:
    """A llama.cpp server this script starts and stops with serve.sh (never the one given by --url)."""

    def __init__(self, serve_sh: Path, port: int) -> None:
        self.serve_sh = serve_sh
        self.port = port
        self.pid: int | None = None

    def start(self) -> None:
        out = subprocess.run(
            [str(self.serve_sh)],
            env={**os.environ, "PORT": str(self.port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = out.stdout.split()
        if lines:
            self.pid = int(lines[0])
        if out.returncode != 0:
            raise RuntimeError(f"serve.sh on port {self.port} failed: {out.stderr.strip()}")

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def prober_config(path: Path, main_url: str, outage_url: str | None, interval: float) -> None:
    pairs = [(MAIN, main_url)] + ([(OUTAGE, outage_url)] if outage_url else [])
    targets = "".join(
        f"""
[[targets]]
kind = "openai"
model = "{MODEL}"
base_url = "{url}"
name = "{name}"
host = "localhost"
prompts = ["{PROMPT}"]
"""
        for name, url in pairs
    )
    path.write_text(f"[defaults]\ninterval_s = {interval}\ntimeout_s = 30.0\n{targets}")


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def read_charts(nc: Client) -> dict[str, ChartRecord]:
    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return {}
    out: dict[str, ChartRecord] = {}
    for key in keys:
        if key.startswith("_"):
            continue
        entry = await kv.get(key)
        if entry.value:
            with contextlib.suppress(msgspec.DecodeError):
                out[key] = decode_record(entry.value)
    return out


def armed(rec: ChartRecord) -> bool:
    if rec.meta.metric == AVAILABILITY:
        return rec.availability is not None and rec.availability.phase == "armed"
    return rec.view is not None and rec.view.phase == "armed"


def progress(rec: ChartRecord) -> str:
    if rec.availability is not None:
        return f"{rec.availability.progress}/{rec.availability.baseline_n}"
    if rec.view is not None:
        note = f" ({rec.view.note})" if rec.view.note else ""
        return f"{rec.view.progress}/{rec.view.baseline_n}{note}"
    return "?"


async def load_client(
    client: httpx.AsyncClient, url: str, until: float, max_requests: int, done: list[int]
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": LOAD_PROMPT}],
        "max_tokens": 32,
    }
    n = 0
    while time.monotonic() < until and n < max_requests:
        n += 1
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(f"{url}/chat/completions", json=body, timeout=60)
            if r.status_code == 200:
                done[0] += 1


async def wait_for(pred: Callable[[], bool], within: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def main_async(args: argparse.Namespace, run: Run, tmp: Path, events_out: TextIO) -> int:
    results: list[tuple[str, bool, str]] = []
    nats_server = EmbeddedNats(tmp / "nats", free_port())
    own = OwnServer(Path(args.serve_sh), args.outage_port)
    prober: subprocess.Popen[bytes] | None = None
    engine: subprocess.Popen[bytes] | None = None
    nc: Client | None = None
    sampler: asyncio.Task[None] | None = None
    try:
        url = nats_server.start()
        outage_url: str | None = None
        if not args.no_outage:
            say(f"NATS at {url}; starting own server on port {args.outage_port}")
            own.start()
            say(f"own server pid {own.pid}")
            outage_url = f"http://127.0.0.1:{args.outage_port}/v1"
        cfg = tmp / "prober.toml"
        prober_config(cfg, args.url, outage_url, args.interval)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSCOPE_")}
        base_env.update(NATS_URL=url, LLMSCOPE_LOG_LEVEL="INFO")
        nc = await nats.connect(url)

        async def on_violation(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                ev = codec.decode_as(msg.data, ViolationEvent)
                run.events.append(Recorded(run.now(), ev))
                events_out.write(
                    json.dumps({"t": round(run.now(), 2), "event": json.loads(msgspec.json.encode(ev))})
                    + "\n"
                )
                events_out.flush()
                say("violation " + describe(ev))

        await nc.subscribe(subjects.VIOLATIONS_ALL, cb=on_violation)

        async def sample_load() -> None:
            while True:
                run.loadavg.append((run.now(), loadavg1()))
                await asyncio.sleep(15)

        sampler = asyncio.create_task(sample_load())
        engine = spawn("llmscope.spc_engine", {**base_env}, tmp / "engine.log")
        prober = spawn(
            "llmscope.prober",
            {**base_env, "LLMSCOPE_PROBER_CONFIG": str(cfg), "LLMSCOPE_PROBER_HEALTH_PORT": "0"},
            tmp / "prober.log",
        )

        # 1. Arm ------------------------------------------------------------------------------
        t_arm = run.now()
        charts: dict[str, ChartRecord] = {}

        def needed(recs: dict[str, ChartRecord]) -> list[ChartRecord]:
            return [
                r
                for r in recs.values()
                if r.meta.metric == "latency_ms"
                or (r.meta.metric == AVAILABILITY and r.meta.target == OUTAGE)
            ]

        last_print = 0.0
        deadline = time.monotonic() + args.arm_timeout_s
        ok_arm = False
        while time.monotonic() < deadline:
            for p, name in ((engine, "spc engine"), (prober, "prober")):
                if p.poll() is not None:
                    raise RuntimeError(f"the {name} exited with {p.returncode}; see {tmp}")
            charts = await read_charts(nc)
            need = needed(charts)
            if len(need) >= (1 if args.no_outage else 3) and all(armed(r) for r in need):
                ok_arm = True
                break
            if time.monotonic() - last_print > 60:
                last_print = time.monotonic()
                say("arming: " + "; ".join(f"{r.meta.target}/{r.meta.metric} {progress(r)}" for r in need))
            await asyncio.sleep(2)
        arm_s = run.now() - t_arm
        run.phases["arm"] = (t_arm, run.now())
        say(f"step 1 arm: {arm_s:.0f} s")
        for rec in sorted(charts.values(), key=lambda c: c.key):
            if rec.view is not None and rec.view.phase == "armed":
                v = rec.view
                lim = v.limits
                say(
                    f"  {rec.meta.target}/{rec.meta.metric}: ar_order={v.ar_order}"
                    f" autocorr={v.autocorrelation}"
                    f" tail_rate={v.tail_rate} arl0_critical={v.arl0_critical}"
                    f" center={lim.center if lim else None} baseline_n={v.baseline_n}"
                    f" excluded={v.baseline.n_excluded if v.baseline else None}"
                )
            elif rec.availability is not None:
                a = rec.availability
                say(
                    f"  {rec.meta.target}/availability: phase={a.phase}"
                    f" failure_rate={a.baseline_failure_rate}"
                    f" fail_run={a.fail_run} threshold={a.threshold}/{a.window}"
                )
            else:
                say(f"  {rec.meta.target}/{rec.meta.metric}: {progress(rec)}")
        results.append(("1 arm", ok_arm, f"{arm_s / 60:.1f} min"))
        if not ok_arm:
            return report(run, results)

        # 2. Idle -----------------------------------------------------------------------------
        t_idle = run.now()
        say(f"step 2 idle for {args.idle_min} min")
        await asyncio.sleep(args.idle_min * 60)
        run.phases["idle"] = (t_idle, run.now())
        idle = run.between(t_idle, run.now(), lambda e: e.state == "open")
        crit = [r for r in idle if r.ev.severity == "critical"]
        warn = [r for r in idle if r.ev.severity == "warning"]
        info = [r for r in idle if r.ev.severity == "info"]
        detail = (
            f"{len(crit)} critical, {len(warn)} warning, {len(info)} info opened in {args.idle_min} min;"
            f" loadavg {run.load_between(t_idle, run.now())}"
        )
        say("step 2 idle: " + detail)
        for r in idle:
            say("  " + describe(r.ev))
        results.append(("2 idle: no critical", not crit, detail))

        # 3. Load -----------------------------------------------------------------------------
        t_load = run.now()
        say(f"step 3 load: 3 clients on {args.url} for {args.load_s} s")
        done = [0]
        async with httpx.AsyncClient() as client:
            until = time.monotonic() + args.load_s
            await asyncio.gather(*(load_client(client, args.url, until, 10_000, done) for _ in range(3)))
        t_load_end = run.now()
        say(f"load stopped after {t_load_end - t_load:.0f} s, {done[0]} requests answered")

        def main_crit(start: float) -> list[Recorded]:
            return run.between(
                start,
                run.now() + 1,
                lambda e: is_critical_open(e) and e.target == MAIN and e.metric == "latency_ms",
            )

        opened = main_crit(t_load)
        cleared_ok = False
        if opened:
            ids = {r.ev.episode_id for r in opened}

            def all_cleared() -> bool:
                got = {r.ev.episode_id for r in run.events if r.ev.state == "cleared"}
                return ids <= got

            cleared_ok = await wait_for(all_cleared, args.clear_timeout_s)
        t_after = run.now()
        run.phases["load"] = (t_load, t_after)
        opened = main_crit(t_load)
        load_all = run.between(t_load, t_after, lambda e: e.state == "open")
        first = opened[0] if opened else None
        cleared = [
            r
            for r in run.events
            if r.ev.state == "cleared" and first is not None and r.ev.episode_id == first.ev.episode_id
        ]
        open_delay = f"{first.t - t_load:.0f} s after load start ({first.ev.rule})" if first else "never"
        clear_delay = f"{cleared[0].t - t_load_end:.0f} s after load stopped" if cleared else "not cleared"
        say(
            f"step 3 load: {len(opened)} critical latency episode(s) on {MAIN};"
            f" first {open_delay}; {clear_delay}"
        )
        say(f"  loadavg during load {run.load_between(t_load, t_load_end)}")
        for r in load_all:
            say(f"  +{r.t - t_load:6.0f}s " + describe(r.ev))
        results.append(
            (
                "3 load: one critical latency episode",
                len(opened) == 1 and first is not None and first.t - t_load <= args.detect_within_s,
                f"{len(opened)} opened; first {open_delay}; {done[0]} load requests",
            )
        )
        results.append(("3 load: cleared after load stops", bool(cleared) and cleared_ok, clear_delay))
        others = [r for r in load_all if r.ev.severity == "critical" and r.ev.target != MAIN]
        if others:
            say(f"  note: {len(others)} critical on other targets during the load (shared CPU)")

        # 4. Outage ---------------------------------------------------------------------------
        if args.no_outage:
            return report(run, results)
        await asyncio.sleep(args.settle_s)  # let the load's tail settle before the next step
        t_out = run.now()
        say(f"step 4 outage: stopping own server (pid {own.pid}) for {args.outage_s} s")
        own.stop()
        await asyncio.sleep(args.outage_s)
        t_restart = run.now()
        own.start()
        say(f"restarted own server, pid {own.pid}")

        def avail_open() -> list[Recorded]:
            return run.between(
                t_out,
                run.now() + 1,
                lambda e: is_critical_open(e) and e.target == OUTAGE and e.rule == "AVAILABILITY",
            )

        def avail_cleared() -> bool:
            ids = {r.ev.episode_id for r in avail_open()}
            got = {r.ev.episode_id for r in run.events if r.ev.state == "cleared"}
            return bool(ids) and ids <= got

        clear_ok = await wait_for(avail_cleared, args.clear_timeout_s)
        run.phases["outage"] = (t_out, run.now())
        aopen = avail_open()
        a_first = aopen[0] if aopen else None
        a_clear = [
            r
            for r in run.events
            if r.ev.state == "cleared" and a_first is not None and r.ev.episode_id == a_first.ev.episode_id
        ]
        for r in run.between(t_out, run.now(), lambda e: True):
            say(f"  +{r.t - t_out:6.0f}s " + describe(r.ev))
        odetail = (
            f"{len(aopen)} AVAILABILITY critical; opened "
            + (f"{a_first.t - t_out:.0f} s after the stop" if a_first else "never")
            + "; "
            + (
                f"cleared {a_clear[0].t - t_restart:.0f} s after the restart (same episode id)"
                if a_clear
                else "not cleared"
            )
        )
        # A `cleared` of the same chart under another episode id never resolves the open one.
        other = [
            r
            for r in run.between(
                t_out, run.now() + 1, lambda e: e.state == "cleared" and e.rule == "AVAILABILITY"
            )
            if a_first is not None and r.ev.episode_id != a_first.ev.episode_id and r.ev.target == OUTAGE
        ]
        if other:
            late = other[0].t - t_restart
            odetail += f"; a cleared event {late:.0f} s after the restart carries another episode id"
        say("step 4 outage: " + odetail)
        results.append(("4 outage: one AVAILABILITY critical", len(aopen) == 1, odetail))
        results.append(("4 outage: cleared on restart, same episode", bool(a_clear) and clear_ok, odetail))
        return report(run, results)
    finally:
        if sampler is not None:
            sampler.cancel()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        stop_proc(prober)
        stop_proc(engine)
        own.stop()
        nats_server.stop()


def report(run: Run, results: list[tuple[str, bool, str]]) -> int:
    print("\n== summary", flush=True)
    for name, ok, detail in results:
        print(f"  {verdict(ok)}  {name:45} {detail}")
    crit = [r for r in run.events if is_critical_open(r.ev)]
    print(f"  violations received: {len(run.events)} ({len(crit)} critical opens)")
    print(f"  loadavg over the run: {run.load_between(0, run.now() + 1)}")
    print(f"  cpu: {os.cpu_count()} x {cpu_model()}")
    return 0 if all(ok for _, ok, _ in results) else 1


def loadavg1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_model() -> str:
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("model name"):
            return ln.split(":", 1)[1].strip()
    return "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:18080/v1", help="running server to probe and load")
    p.add_argument("--outage-port", type=int, default=18081, help="port of the server this script stops")
    p.add_argument("--serve-sh", default=str(SERVE_SH), help="script that starts a server (PORT=...)")
    p.add_argument("--interval", type=float, default=0.1, help="prober interval_s (probes are serialized)")
    p.add_argument("--idle-min", type=float, default=30.0)
    p.add_argument("--load-s", type=float, default=180.0)
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument("--arm-timeout-s", type=float, default=1200.0)
    p.add_argument("--clear-timeout-s", type=float, default=600.0)
    p.add_argument("--detect-within-s", type=float, default=180.0, help="'a few minutes' for step 3")
    p.add_argument("--settle-s", type=float, default=30.0)
    p.add_argument(
        "--no-outage",
        action="store_true",
        help="probe only the running server and skip step 4 (a quieter host: one server, not two)",
    )
    p.add_argument("--events", help="JSON lines of every violation event (default: in the log directory)")
    args = p.parse_args()
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop every process started here.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = Run()
    tmp = Path(tempfile.mkdtemp(prefix="llmscope-real-"))
    say(f"logs in {tmp}; loadavg now {Path('/proc/loadavg').read_text().strip()}")
    try:
        with Path(args.events or tmp / "events.jsonl").open("w") as events_out:
            return asyncio.run(main_async(args, run, tmp, events_out))
    except KeyboardInterrupt:
        report(run, [("interrupted", False, "")])
        return 130


if __name__ == "__main__":
    sys.exit(main())
