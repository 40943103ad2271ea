"""``bench/traffic_bench.py --quick`` runs end to end and prints every section (behaviour, not the
figures: those are in the README, from a full run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "traffic_bench.py"


def test_quick_traffic_bench_prints_every_section() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            *("--quick", "--rates", "5", "--minutes", "1700", "--trials", "2"),
            *("--provider-cycle", "--histograms"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert_machine_printed(out.stdout, "numpy")
    for heading in ("== (a) false alarms", "== (b) detection delay", "== (c) /v1/metrics"):
        assert heading in text
    for variant in (
        "components/sd (default)",
        "no load adjustment (before)",
        "laney/sd",
        "components/mr",
        "per-request (before)",
    ):
        assert variant in text
    for change in ("slowdown 1.5x", "slowdown 2x", "errors 1% -> 3%", "errors 1% -> 5%"):
        assert f"rate 5/s {change}" in text
    # A 2x slowdown at 300 requests a minute is found in both trials.
    assert re.search(r"rate 5/s slowdown 2x\s+minute charts: detected 2/2", text)
    assert "between-minute sd (tau)" in text
    assert "before (no load adjustment): detected" in text
    assert "provider cycle, now: detected" in text
    assert not re.search(r"\b(inf|nan)\b", text), "every figure is finite"
