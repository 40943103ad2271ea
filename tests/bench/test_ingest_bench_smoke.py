"""``bench/ingest_bench.py --quick --only e`` runs end to end and prints its figures (not timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest_bench.py"


def test_the_persister_drain_section_prints_its_baselines_ratios_and_cpu() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "e", "--loops", "asyncio,uvloop"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert_machine_printed(text, "nats-py", "asyncpg", "nats-server")
    assert "== (e) persister draining" in text
    for loop in ("asyncio", "uvloop"):
        assert re.search(rf"bare copy_records_to_table.*\({loop}\)\s+[\d,]+ /s\s+baseline", text)
        assert re.search(rf"persister drain: .*\({loop}\)\s+[\d,]+ /s\s+=\s+[\d.]+ x baseline", text)
        assert re.search(rf"its consumer alone, storing nothing \({loop}\)\s+[\d,]+ /s", text)
        assert re.search(rf"bare COPY on \d+ connections at once.*\({loop}\)\s+[\d,]+ /s", text)
    # CPU per event split by process, for COPY and the persister, on each loop.
    cpu = re.findall(
        r"COPY (\d+) \(client [\d.]+, postgres [\d.]+, nats-server [\d.]+\), persister (\d+) \(", text
    )
    assert len(cpu) == 2
    assert all(int(persister) > 0 for _, persister in cpu)
    # Each round's client CPU and ratio, for the spread (one round with --quick).
    rounds = r"each round: persister's client CPU µs per event [\d.]+; drain / COPY [\d.]+"
    assert len(re.findall(rounds, text)) == 2
    assert re.search(r"uvloop / asyncio: persister drain [\d.]+ x the rate", text)
    rates = re.findall(r"([\d,]+) /s", text)
    assert all(int(r.replace(",", "")) > 0 for r in rates)
    assert len(re.findall(r"persister drain against it\s+[\d,]+ /s\s+=\s+[\d.]+ x", text)) == 2
    assert not re.search(r"\b(inf|nan)\b", text), "every figure is finite"
