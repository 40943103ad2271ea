"""``bench/otlp_bench.py`` runs end to end on small bodies and prints every case (behaviour, not the
figures: those are in docs/benchmarks.md, from a full run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "otlp_bench.py"


def test_otlp_bench_prints_every_case_for_every_encoding() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--spans", "4", "--seconds", "0.2"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert_machine_printed(text, "nats-py", "nats-server")
    for body in ("protobuf", "protobuf+gzip", "json", "json+gzip"):
        for case in (
            "(a) opentelemetry-proto",
            "(b) bare FastAPI",
            "(c) receiver decode",
            "(d) receiver route",
            "(e) as (d), each span's publish",
        ):
            assert re.search(rf"^{re.escape(body)}\s+{re.escape(case)}.*\d", text, re.M), (body, case)
    # Every span of (d) and (e) reached JetStream once: the route answered 200 only after the acks.
    stored = re.search(r"JetStream stored ([\d,]+) traffic events", text)
    assert stored is not None
    assert int(stored.group(1).replace(",", "")) > 0
    assert not re.search(r"\b(inf|nan)\b", text), "every figure is finite"
