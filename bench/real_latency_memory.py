"""Why a baseline cannot learn the idle wander of a real server: batch-means long-run scale.

Reads the recorded real-server telemetry (``tests/data/real_llm_quiet_host.jsonl.gz``) and prints,
per metric and window length L, the long-run standard deviation of the baseline's log values
estimated from its L-point batch means (sqrt(L) x sd of the means), its ratio to the robust
marginal sigma, and how far the idle step's worst L-point window mean went from the baseline's
centre, in standard errors of that estimate and as a factor. For independent points the ratio is
1 at every L, for AR(1) it levels off at sqrt((1 + phi) / (1 - phi)); a ratio that keeps growing
with L is long memory, which a baseline of a few hundred seconds does not contain.

Usage: ``python bench/real_latency_memory.py [FILE]``.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_llm_quiet_host.jsonl.gz"


def main(path: Path) -> None:
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    print(f"data         {path.name}: {len(rows)} probes")
    for metric in ("latency_ms", "ttft_ms"):
        ok = [r for r in rows if r["status"] == "ok" and isinstance(r[metric], float) and r[metric] > 0]
        x = np.log([r[metric] for r in ok])
        phase = np.array([r["phase"] for r in ok])
        base, idle = x[phase == "baseline"], x[phase == "idle"]
        centre = float(np.median(base))
        sigma = 1.482602218505602 * float(np.median(np.abs(base - centre)))
        d = base - base.mean()
        lag1 = float(d[1:] @ d[:-1]) / float(d @ d)
        ar1 = math.sqrt((1 + lag1) / (1 - lag1))
        print(f"\n{metric}: baseline {base.size} points, robust sigma_log {sigma:.3f}, lag-1 {lag1:.2f}")
        print(f"  AR(1) with that lag-1 would give a long-run/marginal ratio of {ar1:.2f} at every L")
        for size in (10, 25, 50, 100, 200):
            k = base.size // size
            means = base[: k * size].reshape(k, size).mean(axis=1)
            long_run = math.sqrt(size) * float(means.std(ddof=1))
            ki = idle.size // size
            worst = float(idle[: ki * size].reshape(ki, size).mean(axis=1).max()) - centre
            print(
                f"  L={size:<4d} ({k:3d} batches) long-run sd {long_run:.3f}"
                f" = {long_run / sigma:4.2f} x sigma;"
                f" idle's worst window {math.exp(worst):.2f}x the centre"
                f" = {worst / (long_run / math.sqrt(size)):.1f} standard errors"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
