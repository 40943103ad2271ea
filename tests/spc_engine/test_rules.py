"""Nelson tests: streaming evaluation against a batch numpy oracle, and the conventions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from numpy.lib.stride_tricks import sliding_window_view as windows

from llmscope.spc_engine.rules import MINITAB_K, NelsonRules, NelsonTestConfig, RulesConfig

Arr = npt.NDArray[np.float64]


def _run_length(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    out = np.zeros(flags.size, dtype=np.int64)
    run = 0
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        out[i] = run
    return out


def oracle(y: Arr, z: Arr, k: dict[int, float]) -> npt.NDArray[np.bool_]:
    """(n, 8) boolean: test t fires at point i, computed from whole windows."""
    n = y.size
    res = np.zeros((n, 8), dtype=bool)
    res[:, 0] = np.abs(z) > k[1]
    k2 = int(k[2])
    for side in (z > 0, z < 0):
        if n >= k2:
            res[k2 - 1 :, 1] |= windows(side, k2).all(axis=1)
    d = np.sign(np.diff(y))
    k3 = int(k[3])
    if d.size >= k3:
        w = windows(d, k3)
        hit = (w > 0).all(axis=1) | (w < 0).all(axis=1)
        res[k3:, 2] = hit
    k4 = int(k[4])
    if d.size >= k4:
        w = windows(d, k4)
        alt = (w != 0).all(axis=1) & (w[:, 1:] == -w[:, :-1]).all(axis=1)
        res[k4:, 3] = alt
    for col, bound, kk in ((4, 2.0, int(k[5])), (5, 1.0, int(k[6]))):
        for i in range(n):
            w5 = z[max(0, i - kk) : i + 1]
            res[i, col] = (w5 > bound).sum() >= kk or (w5 < -bound).sum() >= kk
    res[:, 6] = _run_length(np.abs(z) < 1) >= k[7]
    res[:, 7] = _run_length(np.abs(z) > 1) >= k[8]
    return res


def _stream(y: Arr, z: Arr, cfg: RulesConfig) -> npt.NDArray[np.bool_]:
    rules = NelsonRules(cfg)
    out = np.zeros((y.size, 8), dtype=bool)
    for i in range(y.size):
        for t in rules.update(float(y[i]), float(z[i])):
            out[i, t - 1] = True
    return out


@pytest.mark.parametrize("seed", range(4))
def test_streaming_matches_batch_oracle_at_every_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Quantised values: ties and exact centre-line points occur, and so do trends and runs.
    y = np.round(np.cumsum(rng.normal(0, 1, 600)) * 0.3 + rng.normal(0, 1, 600), 0) / 2
    z = y / (0.8 + 0.4 * seed)
    k = dict(MINITAB_K)
    if seed >= 2:
        k.update({1: 2.5, 2: 5, 3: 3, 4: 6, 5: 3, 6: 3, 7: 6, 8: 4})
    cfg = RulesConfig(**{f"r{t}": NelsonTestConfig(k=k[t]) for t in range(1, 9)})
    expected = oracle(y, z, k)
    got = _stream(y, z, cfg)
    assert expected.any(axis=0).sum() >= 6  # the data exercise most tests
    np.testing.assert_array_equal(got, expected)


def test_test3_counts_changes_like_minitab() -> None:
    cfg = RulesConfig().only({3})
    y = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])  # 7 points = 6 increases on the 7th point
    fired = _stream(y, y * 0, cfg)[:, 2]
    assert fired.tolist() == [False] * 6 + [True, True]


def test_ties_break_trends_and_alternation() -> None:
    y = np.array([0.0, 1, 2, 3, 3, 4, 5, 6, 7, 8])
    assert not _stream(y, y * 0, RulesConfig().only({3}))[:, 2].any()
    alt = np.array([0.0, 1] * 20)
    alt[9] = alt[8]  # a tie: points 8, 9 and 10 are equal
    got = _stream(alt, alt * 0, RulesConfig().only({4}))[:, 3]
    # The first change after the tie is at point 11; its 14th change is at point 24.
    assert got.argmax() == 24


def test_centre_point_breaks_a_side_run() -> None:
    z = np.array([0.5] * 8 + [0.0] + [0.5] * 9)
    got = _stream(z, z, RulesConfig().only({2}))[:, 1]
    assert got.tolist() == [False] * 17 + [True]


def test_start_up_k_of_k_plus_one_fires_on_the_first_k_points() -> None:
    z = np.array([2.5, 2.5, 0.0])
    got = _stream(z, z, RulesConfig().only({5}))[:, 4]
    assert got.tolist() == [False, True, True]


def test_each_test_switchable_and_validated() -> None:
    cfg = RulesConfig().only({1, 7})
    assert [t for t in range(1, 9) if cfg.test(t).enabled] == [1, 7]
    with pytest.raises(ValueError):
        RulesConfig(r2=NelsonTestConfig(k=2.5))
    assert RulesConfig().window(3) == 7
    assert "6 increases" in RulesConfig().name(3)
