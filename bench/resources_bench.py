"""Per-service CPU and memory of the running stack: the figures behind deploy/k8s's resources.

Not a test: it prints figures and writes them to ``deploy/k8s/resources.json`` (``--write``),
from which the Kubernetes requests and limits are derived by :func:`derive` (the rule below);
tests/deploy/test_resources.py fails when the manifests and that file disagree.

It runs ``llmscope up`` three times, each a fresh stack in a temporary data directory with every
component its own process (embedded nats-server and PostgreSQL, the API, the SPC engine, the
alerter, the prober and the simulator), at three load levels:

- ``idle`` (the baseline, measured in the same run): every service up, a probe per target every
  60 s and no simulated traffic, so what is left is the services' own timers and scrapes;
- ``typical``: what ``llmscope up`` runs by default, the demo profile: the prober probes the
  simulator's models every 0.25 s (eight times the production default of 2 s per target) and
  the simulator sends 4 requests/s of application traffic over OTLP; the charts arm (200-point
  baselines) during the run, so armed charts are included;
- ``heavy``: probes every 0.1 s and 20 requests/s of traffic.

After the API answers and a warm-up, it samples every process every 2 s with psutil: CPU in
cores (user + system seconds over wall seconds between two samples) and resident memory. A
service's figure is its process; PostgreSQL's is the postmaster and all its backends, memory as
their summed PSS (their shared buffers counted once, as a container's cgroup does) and CPU
summed. Printed per service and level: CPU p50 / p95 / max and peak memory, and each level's CPU
as a ratio to the idle baseline.

What a few minutes cannot show: memory that grows over days (chart state per model and prompt,
the alerter's incident history); the limits' headroom is for that. The host is shared (2 cores,
other sessions' work beside it), so CPU figures are upper-biased by contention and vary between
runs; the script prints the load average before and after.

Usage: ``python bench/resources_bench.py [--seconds 90] [--warmup 20] [--write]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from llmscope.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import facts

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "deploy" / "k8s" / "resources.json"
# CPU times tick in hundredths of a second: over 2 s a sample resolves 5 millicores.
SAMPLE_S = 2.0
GROUPS = ("api", "spc-engine", "alerter", "prober", "sim", "nats", "postgres")

LEVELS: dict[str, dict[str, str]] = {
    "idle": {"LLMSCOPE_PROBER_INTERVAL_S": "60", "LLMSCOPE_SIM_TRAFFIC_RPS": "0"},
    "typical": {},
    "heavy": {"LLMSCOPE_PROBER_INTERVAL_S": "0.1", "LLMSCOPE_SIM_TRAFFIC_RPS": "20"},
}

# The rule that turns the figures into requests and limits (tests/deploy/test_resources.py
# applies it again to resources.json and compares with the manifests).
RULE = (
    "cpu request: the typical level's p95, rounded up to 10m (at least 10m); "
    "memory request: the typical level's peak x 1.25, rounded up to 16Mi; "
    "memory limit: the highest peak of any level x 2 or + 256Mi, whichever is more, rounded up to "
    "64Mi (headroom for state that grows over days, large dashboard queries and PostgreSQL's "
    "128MB of shared buffers filling, which minutes of measurement cannot show); "
    "no CPU limit (throttling a probe or a consumer delays it; "
    "requests already share the node's CPU in proportion)"
)


def derive(figures: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, str]]]:
    """Requests and limits per service from measured figures (levels -> service -> stats)."""
    resources: dict[str, dict[str, dict[str, str]]] = {}
    for service in GROUPS:
        typical = figures["typical"][service]
        peak_mib = max(figures[level][service]["peak_mib"] for level in figures)
        cpu_m = max(10, math.ceil(typical["cpu_p95"] * 1000 / 10) * 10)
        request_mib = math.ceil(typical["peak_mib"] * 1.25 / 16) * 16
        limit_mib = math.ceil(max(peak_mib * 2, peak_mib + 256) / 64) * 64
        resources[service] = {
            "requests": {"cpu": f"{cpu_m}m", "memory": f"{request_mib}Mi"},
            "limits": {"memory": f"{limit_mib}Mi"},
        }
    return resources


def group_of(proc: psutil.Process, up_pid: int) -> str | None:
    """Which service a process of the stack belongs to (None: the `up` supervisor itself)."""
    if proc.pid == up_pid:
        return None
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if not cmdline:
        return None
    first = Path(cmdline[0]).name
    if first.startswith("nats-server"):
        return "nats"
    if first.startswith("postgres") or (cmdline[0].startswith("postgres:")):
        return "postgres"
    if "llmscope.stack.cli" in cmdline:
        name = cmdline[cmdline.index("llmscope.stack.cli") + 1]
        return name if name in GROUPS else None
    return None


@dataclass
class Sampler:
    """CPU seconds and memory of each service's processes, sampled over time."""

    up_pid: int
    cpu: dict[str, list[float]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    mem: dict[str, list[float]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    _last: dict[int, float] = field(default_factory=dict)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _at: float = 0.0

    def _stack(self) -> list[tuple[str, psutil.Process]]:
        found = []
        for proc in psutil.Process(self.up_pid).children(recursive=True):
            known = self._procs.setdefault(proc.pid, proc)
            group = group_of(known, self.up_pid)
            if group is not None:
                found.append((group, known))
        return found

    def sample(self, record: bool) -> None:
        now = time.monotonic()
        seconds = dict.fromkeys(GROUPS, 0.0)
        memory = dict.fromkeys(GROUPS, 0.0)
        current: dict[int, float] = {}
        for group, proc in self._stack():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    used = times.user + times.system
                    # One process per container: its RSS is what the cgroup charges. PostgreSQL's
                    # backends share their buffers: PSS counts those pages once over the group.
                    rss = proc.memory_full_info().pss if group == "postgres" else proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            current[proc.pid] = used
            # A process first seen now (a new backend) counts from its start.
            seconds[group] += used - self._last.get(proc.pid, 0.0)
            memory[group] += rss
        wall = now - self._at
        if record and self._at:
            for group in GROUPS:
                self.cpu[group].append(max(seconds[group], 0.0) / wall)
                self.mem[group].append(memory[group] / 2**20)
        self._last = current
        self._at = now

    def figures(self) -> dict[str, dict[str, float]]:
        out = {}
        for group in GROUPS:
            cpu = sorted(self.cpu[group])
            out[group] = {
                "cpu_mean": round(sum(cpu) / len(cpu) if cpu else 0.0, 4),
                "cpu_p50": round(percentile(cpu, 50), 4),
                "cpu_p95": round(percentile(cpu, 95), 4),
                "cpu_max": round(cpu[-1] if cpu else 0.0, 4),
                "peak_mib": round(max(self.mem[group], default=0.0), 1),
            }
        return out


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmscope up exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def run_level(level: str, seconds: float, warmup: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix=f"llmscope-res-{level}-") as data:
        port = free_port()
        env = dict(os.environ)
        for variable in ("NATS_URL", "DATABASE_URL", "LLMSCOPE_PROBER_CONFIG", "LLMSCOPE_TARGETS"):
            env.pop(variable, None)
        env.update(
            LLMSCOPE_DATA_DIR=data,
            LLMSCOPE_HOST="127.0.0.1",
            LLMSCOPE_PORT=str(port),
            LLMSCOPE_NATS_PORT=str(free_port()),
            LLMSCOPE_PG_PORT=str(free_port()),
            LLMSCOPE_SIM_PORT=str(free_port()),
            LLMSCOPE_PROBER_HEALTH_PORT=str(free_port()),
            LLMSCOPE_SPC_HEALTH_PORT=str(free_port()),
            LLMSCOPE_ALERTER_HEALTH_PORT=str(free_port()),
            **LEVELS[level],
        )
        up = subprocess.Popen(
            [sys.executable, "-m", "llmscope.stack.cli", "up"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", up, 180)
            sampler = Sampler(up.pid)
            end_warmup = time.monotonic() + warmup
            while time.monotonic() < end_warmup:
                sampler.sample(record=False)
                time.sleep(SAMPLE_S)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sampler.sample(record=True)
                time.sleep(SAMPLE_S)
                if up.poll() is not None:
                    raise RuntimeError(f"llmscope up exited with {up.returncode} during {level}")
            return sampler.figures()
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=90, help="sampled seconds per load level")
    parser.add_argument("--warmup", type=float, default=20, help="seconds after the API answers, not sampled")
    parser.add_argument(
        "--write", action="store_true", help=f"write the figures to {OUTPUT.relative_to(ROOT)}"
    )
    args = parser.parse_args()

    info: dict[str, str] = {
        **facts(("fastapi", "uvicorn", "nats-py", "asyncpg", "msgspec"), nats_server=True),
        "shared": "yes: other sessions' work runs beside it, so CPU figures are upper-biased",
    }
    print(f"machine: {info}")
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for level in LEVELS:
        # The idle baseline is a third as long: it only needs the services' own rhythm.
        seconds = args.seconds / 3 if level == "idle" else args.seconds
        started = time.monotonic()
        figures[level] = run_level(level, seconds, args.warmup)
        print(f"{level}: {seconds:.0f} s sampled ({time.monotonic() - started:.0f} s with start and stop)")
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    print(
        f"\n{'service':<11} {'level':<8} {'cpu p50':>8} {'p95':>7} {'max':>7}"
        f" {'peak MiB':>9} {'mean/idle':>9}"
    )
    for service in GROUPS:
        base = figures["idle"][service]["cpu_mean"]
        for level in LEVELS:
            f = figures[level][service]
            ratio = f"{f['cpu_mean'] / base:.1f}x" if base > 0 else "-"
            print(
                f"{service:<11} {level:<8} {f['cpu_p50']:>8.3f} {f['cpu_p95']:>7.3f} {f['cpu_max']:>7.3f}"
                f" {f['peak_mib']:>9.1f} {ratio:>9}"
            )
    resources = derive(figures)
    print(f"\nrule: {RULE}")
    for service, values in resources.items():
        print(f"  {service:<11} requests {values['requests']}  limits {values['limits']}")
    if args.write:
        # Other benches' records in the same file (bench/nats_bench.py's nats-cluster) stay.
        record = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
        record |= {
            "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": info,
            "load_average": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in load_after],
            },
            "levels": {level: {**LEVELS[level]} or {"profile": "llmscope up defaults"} for level in LEVELS},
            "seconds": args.seconds,
            "figures": figures,
            "rule": RULE,
            "resources": resources,
        }
        OUTPUT.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
