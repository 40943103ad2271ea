"""The demo profile's acceptance check (issue 7, "Done when"): quiet when armed, quick on a 2x shift.

Not a test: it runs for about 16 minutes and prints what it measured, with PASS or MISS per step.
It starts `llmscope up` exactly as a user does (demo profile: the built-in simulator, its
simulated OTLP traffic, no targets configured; fresh data directory, free ports), then:

1. waits until every probe latency chart is armed;
2. watches ``--quiet-min`` minutes (default 10): no critical violation may open;
3. runs ``llmscope sim inject shift --model MODEL --factor 2`` and measures the time until a
   critical violation of that model opens (target: within 30 s).

Every violation opened during the run is printed at the end, by severity and rule.

    .venv/bin/python bench/demo_check.py
    .venv/bin/python bench/demo_check.py --quiet-min 2     # a shorter look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import one_line  # noqa: E402
from tests.e2e.stack import RunningStack, llmscope_up  # noqa: E402  (the e2e tests' own launcher)


def _latency_charts(client: httpx.Client) -> list[dict[str, Any]]:
    reply = client.get("/api/charts", params={"metric": "latency_ms"})
    if reply.status_code != 200:
        return []
    return [r for r in reply.json() if r.get("view") and not r.get("traffic")]


def _violations(client: httpx.Client, since: datetime) -> list[dict[str, Any]]:
    """Violations opened since ``since`` (the API lists newest first; 500 is plenty per step)."""
    reply = client.get("/api/violations", params={"limit": 500})
    reply.raise_for_status()
    body = reply.json()
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return [v for v in items if datetime.fromisoformat(v["ts"]) >= since]


def _critical(items: list[dict[str, Any]], model: str | None = None) -> list[dict[str, Any]]:
    return [v for v in items if v["severity"] == "critical" and (model is None or v["model"] == model)]


def _describe(v: dict[str, Any]) -> str:
    where = f"{v['model']} {v['prompt_id']} {v['metric']} {v['rule']}"
    return f"{v['ts'][11:19]} {where}: {v.get('detail', '')[:110]}"


def run(stack: RunningStack, quiet_min: float, model: str, arm_timeout_s: float) -> bool:
    started = time.monotonic()
    ok = True
    with stack.client() as client:
        while True:
            charts = _latency_charts(client)
            armed = [c for c in charts if c["view"]["phase"] == "armed"]
            if charts and len(armed) == len(charts) and len(charts) >= 4:
                break
            if time.monotonic() - started > arm_timeout_s:
                print(
                    f"1 arm       MISS: {len(armed)} of {len(charts)} latency charts"
                    f" armed in {arm_timeout_s:.0f} s"
                )
                return False
            time.sleep(2)
        print(
            f"1 arm       PASS: all {len(charts)} latency charts armed"
            f" {time.monotonic() - started:.0f} s after start"
        )

        quiet_from = datetime.now(UTC)
        end = time.monotonic() + quiet_min * 60
        while time.monotonic() < end:
            time.sleep(5)
        quiet = _violations(client, quiet_from)
        crit = _critical(quiet)
        verdict = "PASS" if not crit else "MISS"
        ok &= not crit
        counts = Counter(f"{v['severity']} {v['rule']}" for v in quiet)
        print(
            f"2 quiet     {verdict}: {len(crit)} critical in {quiet_min:g} armed minutes;"
            f" opened in all: {dict(sorted(counts.items()))}"
        )
        for v in crit:
            print(f"              {_describe(v)}")

        injected = datetime.now(UTC)
        t0 = time.monotonic()
        done = stack.llmscope("sim", "inject", "shift", "--model", model, "--factor", "2")
        if done.returncode != 0:
            print(f"3 shift     MISS: inject failed: {done.stderr.strip()}")
            return False
        found: list[dict[str, Any]] = []
        while time.monotonic() - t0 < 120 and not found:
            found = _critical(_violations(client, injected), model)
            if not found:
                time.sleep(0.5)
        if not found:
            print(f"3 shift     MISS: no critical for {model} within 120 s of a 2x shift")
            return False
        first = min(found, key=lambda v: v["ts"])
        delay = (datetime.fromisoformat(first["ts"]) - injected).total_seconds()
        verdict = "PASS" if delay <= 30 else "MISS"
        ok &= delay <= 30
        print(
            f"3 shift     {verdict}: 2x on {model} paged {delay:.1f} s after the injection"
            f" ({_describe(first)})"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quiet-min", type=float, default=10.0, help="armed minutes that must page nothing")
    parser.add_argument("--model", default="llama3.1:8b", help="simulated model to slow down 2x")
    parser.add_argument("--arm-timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    print(f"machine: {one_line()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    with (
        tempfile.TemporaryDirectory(prefix="llmscope-demo-") as tmp,
        llmscope_up(Path(tmp) / "data") as stack,
    ):
        ok = run(stack, args.quiet_min, args.model, args.arm_timeout_s)
    print(f"machine after: {one_line()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
