"""Phase I estimates: moving-range and standard-deviation sigma, cleaning, transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmscope.spc_engine import transforms
from llmscope.spc_engine.baseline import D2, default_clean_limit, estimate


def test_moving_range_and_sd_estimates_match_numpy() -> None:
    x = np.random.default_rng(4).normal(10, 2, 500)
    mr = estimate(x, "mr", clean=False)
    assert math.isclose(mr.center, x.mean())
    assert math.isclose(mr.sigma, np.abs(np.diff(x)).mean() / D2)
    sd = estimate(x, "sd", clean=False)
    assert math.isclose(sd.sigma, x.std(ddof=1))
    assert 1.85 < mr.sigma < 2.15


def test_cleaning_removes_a_burst_and_the_moving_ranges_it_touched() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 1000)
    x[500:503] = 12.0
    est = estimate(x, "mr")
    assert est.excluded == (500, 501, 502)
    keep = np.ones(x.size, dtype=bool)
    keep[500:503] = False
    pairs = keep[1:] & keep[:-1]
    assert math.isclose(est.sigma, np.abs(np.diff(x))[pairs].mean() / D2)
    assert math.isclose(est.center, x[keep].mean())


def test_cleaning_limit_leaves_clean_baselines_alone() -> None:
    assert default_clean_limit(1000) == pytest.approx(4.06, abs=0.01)
    assert default_clean_limit(10) == 3.0
    rng = np.random.default_rng(6)
    dropped = sum(len(estimate(rng.normal(0, 1, 1000)).excluded) > 0 for _ in range(200))
    assert dropped <= 25  # about 5% of clean baselines lose a point


def test_log_transform_round_trips_and_rejects_non_positive() -> None:
    assert transforms.forward("log", 0.0) is None
    assert transforms.forward("none", math.nan) is None
    assert transforms.inverse("log", transforms.forward("log", 250.0) or 0) == pytest.approx(250.0)
    assert transforms.inverse("log", 1000.0) == math.inf
