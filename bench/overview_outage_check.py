"""The overview's acceptance check on the demo stack (issue 11, "Done when"): an injected outage
shows on the overview within 10 s as the worst row, and its violation page lists the failed probes.

Not a test (tests/e2e/test_overview_outage.py is its quick form, on a stack with fast probes): it
starts `llmscope up` exactly as a user does (demo profile: the built-in simulator, default probe
pace, fresh data directory, free ports), signs in with the printed API key as a browser does, then:

1. waits until every probe latency chart is armed and no model is down on the overview;
2. runs ``llmscope sim inject outage --model MODEL`` and reads the overview page (``GET /``, the
   HTML a tab gets) every 0.25 s until its first row, the worst, is MODEL with status ``outage``
   (target: within 10 s); then until that row links the open AVAILABILITY episode;
3. opens that violation's page (``/violations/<id>``) and checks that its probe table lists
   failed probes, each with its kind and error text;
4. clears the outage.

    .venv/bin/python bench/overview_outage_check.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.demo_check import _latency_charts  # noqa: E402  (the demo check's reader)
from bench.machine import one_line  # noqa: E402
from tests.e2e.overview_page import failed_probes, overview_rows, sign_in  # noqa: E402
from tests.e2e.stack import RunningStack, llmscope_up  # noqa: E402

TARGET_S = 10.0


def run(stack: RunningStack, model: str, arm_timeout_s: float) -> bool:
    started = time.monotonic()
    with stack.client() as client, httpx.Client(base_url=stack.base_url, timeout=10) as browser:
        sign_in(browser, stack.api_key)
        while True:
            charts = _latency_charts(client)
            armed = [c for c in charts if c["view"]["phase"] == "armed"]
            rows = overview_rows(browser.get("/").text)
            down = [r.model for r in rows if r.status == "outage"]
            if charts and len(armed) == len(charts) and len(charts) >= 4 and rows and not down:
                break
            if time.monotonic() - started > arm_timeout_s:
                print(f"1 arm       MISS: {len(armed)} of {len(charts)} armed, down: {down}")
                return False
            time.sleep(2)
        print(
            f"1 arm       PASS: {len(charts)} latency charts armed {time.monotonic() - started:.0f} s"
            f" after start; overview rows: {[(r.model, r.status) for r in rows]}"
        )

        injected = datetime.now(UTC)
        t0 = time.monotonic()
        done = stack.llmscope("sim", "inject", "outage", "--model", model)
        if done.returncode != 0:
            print(f"2 overview  MISS: inject failed: {done.stderr.strip()}")
            return False
        worst_at = linked_at = None
        episode: tuple[str, str] | None = None
        rows = []
        while time.monotonic() - t0 < 60 and episode is None:
            rows = overview_rows(browser.get("/").text)
            first = rows[0] if rows else None
            if first and first.model == model and first.status == "outage":
                worst_at = worst_at or time.monotonic() - t0
                avail = [e for e in first.episodes if e[1] == "AVAILABILITY"]
                if avail:
                    linked_at, episode = time.monotonic() - t0, avail[0]
            if episode is None:
                time.sleep(0.25)
        ok = worst_at is not None and worst_at <= TARGET_S
        print(
            f"2 overview  {'PASS' if ok else 'MISS'}: {model} the worst row (outage) "
            + (f"{worst_at:.1f} s after the injection" if worst_at is not None else "never within 60 s")
            + (f"; its AVAILABILITY episode linked after {linked_at:.1f} s" if linked_at else "")
            + f"; rows: {[(r.model, r.status) for r in rows]}"
        )
        if episode is None:
            return False
        page = browser.get(f"/violations/{episode[0]}")
        failed = failed_probes(page.text) if page.status_code == 200 else []
        # Columns of an availability violation's table: time, prompt, status, 3 metrics, error.
        described = [p for p in failed if p.kind not in ("", "ok") and p.error]
        probes_ok = bool(failed) and len(described) == len(failed)
        ok &= probes_ok
        print(
            f"3 violation {'PASS' if probes_ok else 'MISS'}: /violations/{episode[0]} (HTTP"
            f" {page.status_code}) lists {len(failed)} failed probes, {len(described)} with kind and"
            f" error; first: {described[0] if described else failed[:1]}"
        )
        print(f"  injected at {injected:%H:%M:%S} UTC")
        stack.llmscope("sim", "inject", "clear")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3.1:8b", help="simulated model to take down")
    parser.add_argument("--arm-timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    print(f"machine: {one_line()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    with (
        tempfile.TemporaryDirectory(prefix="llmscope-overview-") as tmp,
        llmscope_up(Path(tmp) / "data") as stack,
    ):
        ok = run(stack, args.model, args.arm_timeout_s)
    print(f"machine after: {one_line()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
