"""``bench/id_order.py`` on a small load runs end to end and prints every figure per arm (behaviour;
the figures of a full run are in docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.printed_machine import assert_machine_printed

BENCH = Path(__file__).resolve().parents[2] / "bench" / "id_order.py"


def test_small_id_order_bench_prints_every_figure_per_arm() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "100000", "--rounds", "2", "--events", "300"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert_machine_printed(text, "asyncpg")
    assert len(re.findall(r"^preloaded (random|ordered) .* primary key \d+ MiB", text, re.M)) == 2, text
    rounds = re.findall(r"^round \d (random|ordered) .*\(load [\d.]+, [\d.]+, [\d.]+\)$", text, re.M)
    assert sorted(rounds) == ["ordered", "ordered", "random", "random"], text
    medians = {
        label: (float(random), float(ordered))
        for label, random, ordered in re.findall(
            r"^(\w+(?: \w+)?)\s+random\s+([\d.]+) \[.*?\]\s+ordered\s+([\d.]+) \[", text, re.M
        )
    }
    expected = {"postgres ms", "wall ms", "WAL bytes", "FPI", "pkey reads", "pkey hits", "table reads"}
    assert set(medians) == expected, text
    # Behaviour, not a figure: after a checkpoint, random ids touch (and so copy into the WAL) more
    # leaves of the primary key than ids that append at its right edge.
    assert medians["FPI"][0] > medians["FPI"][1], text
    assert medians["WAL bytes"][0] > medians["WAL bytes"][1], text
