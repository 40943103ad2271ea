"""``bench/stack_bench.py`` runs the whole stack end to end and prints every figure (behaviour, not
timing): CPU per event of each process and per second with no traffic, the bare endpoint's,
latency percentiles, batched ingest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stack_bench.py"


def test_quick_stack_bench_measures_every_process() -> None:
    out = subprocess.run(
        [
            *(sys.executable, str(BENCH), "--rates", "50", "--seconds", "1", "--batched", "1000"),
            *("--idle", "1", "--no-steady"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert_machine_printed(text, "nats-py", "asyncpg", "nats-server")
    for name in ("api", "spc-engine", "alerter", "nats-server", "postgres (all backends)", "whole stack"):
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d\d", text, re.M), name
    assert re.search(r"= [\d.]+ x bare", text)
    assert "== idle 1 s (no traffic, charts armed)" in text
    assert re.search(r"^spc-engine\s+\d+\.\d\s+\d+$", text, re.M), "CPU ms and wake-ups per second idle"
    # Committed is the rows' commit timestamps (every posted event's read back), a lower bound,
    # with the offset between Postgres's clock and the benchmark's printed; stored is the NOTIFY
    # this process received after the commit's flush, an upper bound, printed beside it.
    assert "(50 of 50 rows committed)" in text
    assert "(50 of 50 rows seen)" in text
    assert re.search(r"posted -> committed ms, p50 / p95 / p99\s+[\d.]+ / [\d.]+ / [\d.]+", text)
    assert re.search(r"posted -> stored \(NOTIFY seen\) ms, p50 / p95 / p99\s+[\d.]+ / [\d.]+ / [\d.]+", text)
    assert re.search(
        r"published -> committed ms, p50 / p95 / p99\s+[\d.]+ / [\d.]+ / [\d.]+"
        r" +\([\d,]+ of [\d,]+ rows committed",
        text,
    )
    assert re.search(r"uncertain by \+-\d+\.\d{3} ms", text)
    assert re.search(r"accepted \(202, in JetStream\)\s+[\d,]+ events/s", text)
    assert not re.search(r"\b(inf|nan)\b", text), "every figure is finite"


def test_a_steady_window_is_one_cycle_of_the_engine_state() -> None:
    """``--steady`` (the default) sizes each probe rate's window to one cycle of the engine's state
    writes with its default settings: every 120 s at 100/s (15,000 events would take longer),
    every 15,000 events at 1,000/s, and no sooner than every 15 s above it."""
    sys.path.insert(0, str(BENCH.parent.parent))
    from bench.stack_bench import state_cycle_s

    assert state_cycle_s(100) == 120.0
    assert state_cycle_s(1000) == 15.0
    assert state_cycle_s(5000) == 15.0
    assert state_cycle_s(500) == 30.0
