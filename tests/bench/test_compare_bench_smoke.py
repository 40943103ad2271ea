"""``bench/compare_bench.py --quick`` runs end to end and prints every figure (behaviour; the
figures of a full run are in docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare_bench.py"


def test_quick_compare_bench_prints_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=400, check=False
    )
    assert out.returncode == 0, out.stderr
    figures = dict(re.findall(r"^\s+\((\w)\) .*?\s([\d.]+) ms", out.stdout, re.MULTILINE))
    assert set(figures) == set("abcdefgh"), out.stdout
    assert "483,840 minute rollups" in out.stdout  # 8 models x 6 subgroups x 7 days of minutes
    # Behaviour, not a figure: reading ~170 hour rows beats reading ~240k minute rows.
    assert float(figures["c"]) < float(figures["a"]), out.stdout
    # The last (g) is 30 days by prompt from the series-hour rollups, against (h) on minute rollups.
    assert float(figures["g"]) < float(figures["h"]), out.stdout
