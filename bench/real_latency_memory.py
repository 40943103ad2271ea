"""Why a baseline cannot learn the idle wander of a real server: batch-means long-run scale.

Reads the recorded real-server telemetry (``tests/data/real_llm_quiet_host.jsonl.gz``) and prints,
per metric and window length L, the long-run standard deviation of the baseline's log values
estimated from its L-point batch means (sqrt(L) x sd of the means), its ratio to the robust
marginal sigma, and how far the idle step's worst L-point window mean went from the baseline's
centre, in standard errors of that estimate and as a factor. For independent points the ratio is
1 at every L, for AR(1) it levels off at sqrt((1 + phi) / (1 - phi)); a ratio that keeps growing
with L is long memory, which a baseline of a few hundred seconds does not contain.

Second part: could Phase I tell this long memory apart from ordinary short-range dependence, so
that a practical page floor applied only where the level wanders? For every 1000-point window
of the recorded baseline and idle latency, and for 400 simulated 1000-point baselines of each
textbook case, it prints a memory score: the geometric mean, over L = 25, 50, 100, 200, of the
variance of L-point batch means divided by what the baseline's fitted AR(p) model predicts (1 on
average for a correct short-memory model) and how much the two distributions overlap.

Usage: ``python bench/real_latency_memory.py [FILE]``.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np

from llmscope.spc_engine.baseline import autocorr, default_clean_limit, robust_scale, yule_walker

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


def _ar_acf(phi: tuple[float, ...], lags: int) -> np.ndarray:
    """Autocorrelations r_0..r_lags implied by AR coefficients ``phi`` (Yule-Walker solved for r)."""
    p = len(phi)
    r = np.zeros(lags + 1)
    r[0] = 1.0
    if p:
        a = np.eye(p)
        b = np.zeros(p)
        for k in range(1, p + 1):
            for i in range(1, p + 1):
                j = abs(k - i)
                if j == 0:
                    b[k - 1] += phi[i - 1]
                else:
                    a[k - 1, j - 1] -= phi[i - 1]
        r[1 : min(p, lags) + 1] = np.linalg.solve(a, b)[:lags]
        for k in range(p + 1, lags + 1):
            r[k] = sum(phi[i] * r[k - 1 - i] for i in range(p))
    return r


def memory_score(x: np.ndarray, max_order: int = 5) -> float:
    """Geometric mean over L of observed / AR-predicted variance of L-point batch means."""
    n = x.size
    centre, scale = float(np.median(x)), robust_scale(x)
    bound = default_clean_limit(n) * scale
    xw = np.clip(x, centre - bound, centre + bound)  # winsorized as Phase I does
    phi, _ = yule_walker(autocorr(xw, max_order), n, max_order)
    logs = []
    for batches in (40, 20, 10, 5):
        size = n // batches
        r = _ar_acf(phi, size)
        k = np.arange(1, size)
        predicted = (1.0 + 2.0 * float(np.sum((1.0 - k / size) * r[1:size]))) / size
        means = xw[: batches * size].reshape(batches, size).mean(axis=1)
        logs.append(math.log(float(means.var(ddof=1)) / float(xw.var()) / predicted))
    return math.exp(sum(logs) / len(logs))


def _simulated(rng: np.random.Generator, phi: float, slow: float, n: int = 1000) -> np.ndarray:
    e = rng.standard_normal(n)
    y = np.empty(n)
    prev = rng.standard_normal()
    for t in range(n):
        prev = phi * prev + math.sqrt(1.0 - phi * phi) * e[t]
        y[t] = prev
    y *= 0.2
    hit = rng.random(n) < slow
    y[hit] += np.log(rng.uniform(3.0, 5.0, int(hit.sum())))
    return y


def separation(path: Path) -> None:
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    ok = [r for r in rows if r["status"] == "ok" and r["phase"] in ("baseline", "idle")]
    real = np.log([r["latency_ms"] for r in ok])
    scores = np.array([memory_score(real[i : i + 1000]) for i in range(0, real.size - 1000, 100)])
    print("\nmemory score of 1000-point baselines (1 = what the fitted AR model predicts)")
    print(
        f"  real server latency, {scores.size} windows:"
        f" min {scores.min():.2f}, median {np.median(scores):.2f}"
    )
    rng = np.random.default_rng(7)
    for name, phi, slow in (
        ("independent", 0.0, 0.0),
        ("AR(1) phi 0.3", 0.3, 0.0),
        ("AR(1) phi 0.5", 0.5, 0.0),
        ("phi 0.3 + 1 % 3-5x slower", 0.3, 0.01),
        ("phi 0.5 + 2 % 3-5x slower", 0.5, 0.02),
    ):
        sim = np.array([memory_score(_simulated(rng, phi, slow)) for _ in range(400)])
        print(
            f"  simulated {name:<26s} median {np.median(sim):.2f}, 99th pct {np.quantile(sim, 0.99):.2f};"
            f" {100 * (sim >= scores.min()).mean():4.1f} % at or above the real minimum"
        )


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    main(source)
    separation(source)
