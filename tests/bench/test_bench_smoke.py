"""``bench/spc_bench.py --quick`` runs end to end and prints every section (behaviour, not timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "spc_bench.py"


def test_quick_bench_prints_every_section() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--events", "2000"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for heading in (
        "== (a) chart code alone",
        "== (b) through NATS",
        "== (c) default configuration",
    ):
        assert heading in text
    assert_machine_printed(text, "numpy", "nats-py", "msgspec", "nats-server")
    assert "x decode" in text
    for label in ("raw nats-py consume", "consumer adapter", "SPC service", "service/raw"):
        assert label in text
    # Every measured rate is a positive number.
    rates = re.findall(r"([\d,]+) /s", text)
    assert len(rates) >= 7
    assert all(int(r.replace(",", "")) > 0 for r in rates)
    assert re.search(r"SPC service: consume .*?\s[\d,]+ /s", text), "the service rate is measured"
    assert not re.search(r"\b(inf|nan)\b", text), "every figure is finite"
    # A false-alarm line per process, delays, pages per shift and the faster case, with verdicts.
    from llmscope.spc_engine.performance import PROCESSES, WANDER_PROCESSES

    verdicts = re.findall(r"target .*?\b(PASS|MISS)\b", text)
    assert text.count("false alarms /100k") == len(PROCESSES) + len(WANDER_PROCESSES)
    assert text.count("median delay") == 12 + 4 * 2  # sigma shifts (detectors alone), 2x and 3x (defaults)
    assert text.count("critical episodes per") == 10
    assert "serial dependence ignored" in text
    assert len(verdicts) == len(PROCESSES) + 4 + 10 + 1  # delays have targets at phi 0 and 0.3
