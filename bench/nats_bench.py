"""Sizing of components/nats-cluster: memory, CPU and file-store growth of its three servers.

Not a test: it prints figures and writes them to ``deploy/k8s/resources.json`` under
``nats-cluster`` (``--write``), from which :func:`derive` gives the StatefulSet's requests, memory
limit and volume size; tests/deploy/test_resources.py fails when the manifest and that record
disagree.

There is no Kubernetes here, so it starts three real nats-servers on loopback with the
StatefulSet's own arguments (pod DNS names, volume and pid file mapped to local ports and
directories, as tests/bus/test_cluster.py does) and runs ``llmscope up`` against them with
``LLMSCOPE_STREAM_REPLICAS=3`` (what the component sets): every stream and bucket is kept on all
three servers. The load is ``up``'s demo profile (probes every 0.25 s, 4 traffic requests/s;
charts arm during the run), eight times the production default probe interval, so the rates are
on the high side for one simulator's four models. After the API answers and a warm-up it
samples every ``--sample`` seconds: each server's resident memory and CPU (psutil), each
server's store directory on disk, and every stream's messages and bytes (the first server's
``/jsz``).

Extrapolation: a stream with a maximum age (telemetry and traffic 7 days, violations and
incidents 90, dead letters 30: the defaults of llmscope.bus.settings) holds its measured byte
rate times that age once it is full; a key-value bucket (no age: one value per key, overwritten)
holds what it held at the end. Memory that grows with time is JetStream's de-duplication map:
one entry per message id within the stream's duplicate window (24 h for violations, incidents
and traffic minutes, 120 s for telemetry), estimated at :data:`DEDUP_ENTRY_BYTES` each.

Usage: ``python bench/nats_bench.py [--minutes 5] [--warmup 30] [--sample 10] [--write]``.
"""

from __future__ import annotations

import argparse
import contextlib
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from llmscope.stack.embedded import nats_server_binary
from llmscope.stack.ports import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import facts
from bench.one_at_a_time import run_alone

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "deploy" / "k8s" / "resources.json"
MANIFEST = ROOT / "deploy" / "k8s" / "components" / "nats-cluster" / "nats.yaml"
KEY = "nats-cluster"
TELEMETRY = "LLMSCOPE_TELEMETRY"
GIB = 2**30
MIB = 2**20
# nats-server keeps a map entry and a slice element per de-duplicated message id (the id's
# string, its sequence and timestamp, map overhead): about 150 bytes; 256 to stay on the safe side.
DEDUP_ENTRY_BYTES = 256

RULE = (
    "cpu request: the p95 of one server's CPU, rounded up to 10m (at least 10m); "
    "memory request: (the peak resident memory of a server + the de-duplication map of a full "
    "window) x 1.25, rounded up to 16Mi; memory limit: (the peak x 2 or + 256Mi, whichever is "
    "more) + the de-duplication map, rounded up to 64Mi; no CPU limit; "
    "volume: what every stream holds at its maximum age at the measured byte rate (a bucket: "
    "its size at the end) + what a server's store directory held beyond its streams' bytes at the "
    "end (Raft logs, indexes, overwritten values not yet compacted: bounded, not growing with "
    "retention), x 1.5 (bursts, slack), rounded up to 1Gi (at least 1Gi); "
    "telemetry byte cap (LLMSCOPE_TELEMETRY_MAX_BYTES): the volume less (the other streams and "
    "buckets + the store's own files) x 1.5, rounded down to 1Gi, so that a longer retention or "
    "more targets drop the oldest telemetry instead of filling the volume"
)


def derive(figures: dict[str, Any]) -> dict[str, Any]:
    """Requests, memory limit and volume size of one server from the measured figures."""
    retained = 0.0
    others = 0.0
    dedup_entries = 0.0
    for name, stream in figures["streams"].items():
        rate = stream["bytes_per_s"]
        held = rate * stream["max_age_s"] if stream["max_age_s"] > 0 else stream["bytes_end"]
        retained += held
        others += 0 if name == TELEMETRY else held
        dedup_entries += stream["msgs_per_s"] * stream["duplicate_window_s"]
    dedup_mib = dedup_entries * DEDUP_ENTRY_BYTES / MIB
    peak = figures["server"]["peak_mib"]
    cpu_m = max(10, math.ceil(figures["server"]["cpu_p95"] * 1000 / 10) * 10)
    request_mib = math.ceil((peak + dedup_mib) * 1.25 / 16) * 16
    limit_mib = math.ceil((max(peak * 2, peak + 256) + dedup_mib) / 64) * 64
    overhead = max(0, figures["server"]["store_bytes_end"] - figures["server"]["stream_bytes_end"])
    storage_gib = max(1, math.ceil((retained + overhead) * 1.5 / GIB))
    telemetry_cap_gib = math.floor(storage_gib - (others + overhead) * 1.5 / GIB)
    return {
        "resources": {
            "requests": {"cpu": f"{cpu_m}m", "memory": f"{request_mib}Mi"},
            "limits": {"memory": f"{limit_mib}Mi"},
        },
        "storage": f"{storage_gib}Gi",
        "telemetry_max_bytes": telemetry_cap_gib * GIB,
        "retained_gib": round(retained / GIB, 2),
        "dedup_mib": round(dedup_mib, 1),
    }


def statefulset() -> dict[str, Any]:
    (sts,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "StatefulSet"]
    return sts  # type: ignore[no-any-return]


def local_args(args: list[str], i: int, routes: list[int], monitor: int, tmp: Path) -> list[str]:
    """A pod's arguments with its DNS names, volume, pid file and monitor port mapped onto this machine."""
    out = []
    for arg in args:
        arg = arg.replace("$(POD_NAME)", f"nats-{i}").replace("0.0.0.0:6222", f"127.0.0.1:{routes[i]}")
        for j, port in enumerate(routes):
            arg = arg.replace(f"nats-{j}.nats-cluster:6222", f"127.0.0.1:{port}")
        arg = arg.replace("=/data", f"={tmp / f'n{i}'}").replace("=/var/run/nats/", f"={tmp}/n{i}-")
        if arg.startswith("--http_port="):
            arg = f"--http_port={monitor}"
        out.append(arg)
    leftovers = [a for a in out if "nats-cluster" in a or "/data" in a or "$(" in a]
    if leftovers:
        raise SystemExit(f"manifest arguments this bench does not know how to map: {leftovers}")
    return out


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def wait_for(url: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a process of the run exited")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def dir_bytes(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            # A block compacted away between listing and stat counts nothing.
            with contextlib.suppress(FileNotFoundError):
                total += (Path(folder) / name).stat().st_blocks * 512
    return total


def streams(monitor: int) -> dict[str, dict[str, Any]]:
    data = get_json(f"http://127.0.0.1:{monitor}/jsz?streams=true&config=true")
    out: dict[str, dict[str, Any]] = {}
    for account in data.get("account_details", []):
        for stream in account.get("stream_detail", []):
            config = stream.get("config", {})
            out[stream["name"]] = {
                "messages": stream["state"]["messages"],
                "bytes": stream["state"]["bytes"],
                "max_age_s": config.get("max_age", 0) / 1e9,
                "duplicate_window_s": config.get("duplicate_window", 0) / 1e9,
                "replicas": config.get("num_replicas", 1),
            }
    return out


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run(minutes: float, warmup: float, sample_s: float) -> dict[str, Any]:
    sts = statefulset()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    size = sts["spec"]["replicas"]
    with tempfile.TemporaryDirectory(prefix="llmscope-nats-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ports = free_ports(3 * size + 7)
        routes, clients, monitors, stack = (
            ports[:size],
            ports[size : 2 * size],
            ports[2 * size : 3 * size],
            ports[3 * size :],
        )
        servers: list[subprocess.Popen[bytes]] = []
        up: subprocess.Popen[bytes] | None = None
        try:
            for i in range(size):
                cmd = [
                    str(nats_server_binary()),
                    *local_args(container["args"], i, routes, monitors[i], tmp),
                    "--addr=127.0.0.1",
                    f"--port={clients[i]}",
                ]
                log = (tmp / f"nats-{i}.log").open("ab")
                servers.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )
            for monitor in monitors:
                wait_for(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", 60, servers)
            env = dict(os.environ)
            for variable in ("DATABASE_URL", "LLMSCOPE_PROBER_CONFIG", "LLMSCOPE_TARGETS"):
                env.pop(variable, None)
            api_port = stack[0]
            env.update(
                NATS_URL=",".join(f"nats://127.0.0.1:{p}" for p in clients),
                LLMSCOPE_STREAM_REPLICAS=str(size),
                LLMSCOPE_DATA_DIR=str(tmp / "up"),
                LLMSCOPE_HOST="127.0.0.1",
                LLMSCOPE_PORT=str(api_port),
                LLMSCOPE_PG_PORT=str(stack[1]),
                LLMSCOPE_SIM_PORT=str(stack[2]),
                LLMSCOPE_PROBER_HEALTH_PORT=str(stack[3]),
                LLMSCOPE_SPC_HEALTH_PORT=str(stack[4]),
                LLMSCOPE_ALERTER_HEALTH_PORT=str(stack[5]),
                LLMSCOPE_NATS_PORT=str(stack[6]),
            )
            up_log = (tmp / "up.log").open("ab")
            up = subprocess.Popen(
                [sys.executable, "-m", "llmscope.stack.cli", "up"],
                env=env,
                stdout=up_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_for(f"http://127.0.0.1:{api_port}/healthz", 240, [*servers, up])
            time.sleep(warmup)
            procs = [psutil.Process(p.pid) for p in servers]
            stores = [tmp / f"n{i}" for i in range(size)]
            cpu: list[float] = []
            rss: list[float] = []
            last = [p.cpu_times() for p in procs]
            at = time.monotonic()
            first = streams(monitors[0])
            store_first = [dir_bytes(s) for s in stores]
            started = at
            end = at + minutes * 60
            while time.monotonic() < end:
                time.sleep(sample_s)
                if up.poll() is not None or any(p.poll() is not None for p in servers):
                    raise RuntimeError("llmscope up or a nats-server exited during the run")
                now = time.monotonic()
                times = [p.cpu_times() for p in procs]
                for before, after in zip(last, times, strict=True):
                    cpu.append((after.user + after.system - before.user - before.system) / (now - at))
                rss.extend(p.memory_info().rss / MIB for p in procs)
                last, at = times, now
            seconds = time.monotonic() - started
            final = streams(monitors[0])
            store_end = [dir_bytes(s) for s in stores]
        finally:
            if up is not None and up.poll() is None:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait()
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=30)
    per_stream = {}
    for name, end_state in sorted(final.items()):
        begin = first.get(name, {"messages": 0, "bytes": 0})
        msgs = end_state["messages"] - begin["messages"]
        per_stream[name] = {
            "replicas": end_state["replicas"],
            "max_age_s": end_state["max_age_s"],
            "duplicate_window_s": end_state["duplicate_window_s"],
            "msgs_end": end_state["messages"],
            "bytes_end": end_state["bytes"],
            "msgs_per_s": round(max(msgs, 0) / seconds, 3),
            "bytes_per_s": round(max(end_state["bytes"] - begin["bytes"], 0) / seconds, 1),
            "bytes_per_msg": round((end_state["bytes"] - begin["bytes"]) / msgs, 1) if msgs > 0 else None,
        }
    stream_bytes = sum(s["bytes_end"] for s in per_stream.values())
    ordered = sorted(cpu)
    return {
        "seconds": round(seconds),
        "servers": size,
        "streams": per_stream,
        "server": {
            "cpu_p50": round(percentile(ordered, 50), 4),
            "cpu_p95": round(percentile(ordered, 95), 4),
            "cpu_max": round(ordered[-1] if ordered else 0.0, 4),
            "peak_mib": round(max(rss, default=0.0), 1),
            "store_bytes_end": max(store_end),
            "store_bytes_per_s": round(
                max(e - b for e, b in zip(store_end, store_first, strict=True)) / seconds, 1
            ),
            "stream_bytes_end": stream_bytes,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5, help="sampled minutes")
    parser.add_argument("--warmup", type=float, default=30, help="seconds after the API answers, not sampled")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument(
        "--write", action="store_true", help=f"write the figures to {OUTPUT.relative_to(ROOT)}"
    )
    args = parser.parse_args()

    load_before = os.getloadavg()
    figures = run(args.minutes, args.warmup, args.sample)
    load_after = os.getloadavg()
    derived = derive(figures)
    print(f"{figures['servers']} servers, {figures['seconds']} s sampled")
    print(f"{'stream':<28} {'msgs/s':>8} {'B/msg':>7} {'MiB/day':>8} {'max age d':>9} {'held GiB':>8}")
    for name, s in figures["streams"].items():
        per_day = s["bytes_per_s"] * 86400 / MIB
        held = (s["bytes_per_s"] * s["max_age_s"] if s["max_age_s"] > 0 else s["bytes_end"]) / GIB
        print(
            f"{name:<28} {s['msgs_per_s']:>8.2f} {s['bytes_per_msg'] or 0:>7.0f} {per_day:>8.1f}"
            f" {s['max_age_s'] / 86400:>9.0f} {held:>8.2f}"
        )
    server = figures["server"]
    print(
        f"server: cpu p50 {server['cpu_p50']:.3f} p95 {server['cpu_p95']:.3f}, peak {server['peak_mib']} MiB,"
        f" store {server['store_bytes_per_s'] * 86400 / MIB:.1f} MiB/day on disk,"
        f" {server['store_bytes_end'] / MIB:.1f} MiB on disk"
        f" for {server['stream_bytes_end'] / MIB:.1f} MiB of streams"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"rule: {RULE}")
    print(f"derived: {derived}")
    if args.write:
        record = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
        record[KEY] = {
            "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {
                **facts(("nats-py",), nats_server=True),
                "shared": "yes: the whole stack and other sessions' work run beside the servers",
            },
            "load_average": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in load_after],
            },
            "load": "llmscope up's demo profile (probes every 0.25 s, 4 traffic requests/s),"
            " LLMSCOPE_STREAM_REPLICAS=3",
            "figures": figures,
            "rule": RULE,
            **derived,
        }
        OUTPUT.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {OUTPUT.relative_to(ROOT)} ({KEY})")
    return 0


if __name__ == "__main__":
    run_alone(main, __file__)
