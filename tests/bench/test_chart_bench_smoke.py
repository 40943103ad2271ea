"""``bench/chart_bench.py --quick`` runs end to end, prints every figure, and its checks hold:
the day chart draws the most severe and newest marks within its budget, and an idle tab's
fallback polls stand still while its event stream is open (the figures of a full run are in
the README and docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chart_bench.py"


def test_quick_chart_bench_prints_every_figure_and_its_checks_hold() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=400, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert_machine_printed(out.stdout, "asyncpg")
    figures = dict(re.findall(r"^\s+\((\w)\) .*?\s([\d.]+) /\s+[\d.]+ ms", out.stdout, re.MULTILINE))
    assert set(figures) == set("abcdef"), out.stdout
    # Each row: the answer's size, then what was sent and how ("(sent: 18,765 B gzip)").
    rows = re.findall(
        r"^\s+\((\w)\) (.*?) ms\s+([\d,]+) B \(sent: ([\d,]+) B (\w+)\)", out.stdout, re.MULTILINE
    )
    sizes = {label: size for label, _rest, size, _sent, _how in rows}
    assert set(sizes) == set("abcde"), out.stdout
    sent = {
        (label, "gzip accepted" in rest): (int(n.replace(",", "")), how) for label, rest, _s, n, how in rows
    }
    # The day chart goes gzip when asked and is smaller on the wire; the whole page holds the
    # CSRF token and is never compressed (BREACH).
    assert sent[("a", False)][1] == "none", out.stdout
    assert sent[("a", True)][1] == "gzip", out.stdout
    assert sent[("a", True)][0] < sent[("a", False)][0] / 2, out.stdout
    assert sent[("c", False)][1] == "none", out.stdout
    assert "content-encoding with gzip accepted: a+gz gzip, b gzip, c none, d gzip, e gzip" in out.stdout
    assert "34,560 probes (8,640 per chart" in out.stdout  # 2 prompts x 2 targets, one every 10 s
    marks = re.search(r"^== marks: ([\d,]+) drawn of ([\d,]+) .*: (\w+)$", out.stdout, re.MULTILINE)
    assert marks is not None, out.stdout
    drawn, shown, verdict = int(marks[1].replace(",", "")), int(marks[2].replace(",", "")), marks[3]
    assert shown > drawn  # over the budget: the check is of the choice, not of drawing all
    assert verdict == "OK"
    assert "oldest not drawn" in marks[0]
    assert "== idle tab, event stream open: fallback polls stand still; no new data: 0 requests" in out.stdout
    assert "target < 100 KB and < 50 ms:" in out.stdout
    # Bytes are behaviour, not timing: the day chart's answer stays under 100 KB.
    assert int(sizes["a"].replace(",", "")) < 100_000, out.stdout
