"""EWMA and CUSUM charts against batch numpy oracles after every prefix; state round-trips."""

from __future__ import annotations

import math

import msgspec
import numpy as np

from llmscope.spc_engine.charts.cusum import CusumChart, CusumState
from llmscope.spc_engine.charts.ewma import EwmaChart, EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsChart, IndividualsState
from llmscope.spc_engine.rules import RulesConfig


def test_ewma_matches_closed_form_after_every_prefix() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0.3, 1.0, 300)
    lam, limit = 0.2, 2.86
    chart = EwmaChart(lam, limit)
    bound = limit * math.sqrt(lam / (2 - lam))
    for n in range(1, z.size + 1):
        out = chart.update(float(z[n - 1]))
        # E_n = sum_i lam (1 - lam)^(n - i) z_i
        weights = lam * (1 - lam) ** np.arange(n - 1, -1, -1)
        expected = float(weights @ z[:n])
        assert math.isclose(chart.value, expected, rel_tol=1e-9, abs_tol=1e-12)
        assert out == (abs(expected) > bound)


def test_cusum_matches_page_closed_form_after_every_prefix() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0.2, 1.0, 400)
    ks, hs = (0.25, 0.5, 1.0), (8.0, 5.0, 3.0)
    chart = CusumChart(ks, hs, cap=math.inf)
    for n in range(1, z.size + 1):
        chart.update(float(z[n - 1]))
        for i, k in enumerate(ks):
            s_up = np.concatenate([[0.0], np.cumsum(z[:n] - k)])
            s_dn = np.concatenate([[0.0], np.cumsum(-z[:n] - k)])
            assert math.isclose(chart.state.upper[i], s_up[-1] - s_up.min(), abs_tol=1e-9)
            assert math.isclose(chart.state.lower[i], s_dn[-1] - s_dn.min(), abs_tol=1e-9)


def test_cusum_cap_holds_a_sustained_shift_and_releases_it() -> None:
    chart = CusumChart((0.5,), (5.0,), cap=1.25)
    fired = [chart.update(2.0).fired for _ in range(50)]
    assert fired[:3] == [False, False, False]
    assert all(fired[4:])
    assert chart.state.upper[0] == 6.25
    after = [chart.update(0.0).fired for _ in range(5)]
    assert after == [True, True, False, False, False]  # 6.25 -> 5.75 -> 5.25 -> 4.75


def test_states_round_trip_and_continue_identically() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.2, 200)
    ind = IndividualsChart(0.0, 1.0, RulesConfig())
    ew = EwmaChart(0.1, 2.814)
    cu = CusumChart((0.5,), (5.0,))
    for v in z[:100]:
        ind.update(float(v))
        ew.update(float(v))
        cu.update(float(v))
    ind2 = IndividualsChart(
        0.0, 1.0, RulesConfig(), msgspec.json.decode(msgspec.json.encode(ind.state), type=IndividualsState)
    )
    ew2 = EwmaChart(0.1, 2.814, msgspec.json.decode(msgspec.json.encode(ew.state), type=EwmaState))
    cu2 = CusumChart(
        (0.5,), (5.0,), state=msgspec.json.decode(msgspec.json.encode(cu.state), type=CusumState)
    )
    assert (ind2.state, ew2.state, cu2.state) == (ind.state, ew.state, cu.state)
    for v in z[100:]:
        assert ind.update(float(v)) == ind2.update(float(v))
        assert ew.update(float(v)) == ew2.update(float(v))
        assert cu.update(float(v)) == cu2.update(float(v))
    assert (ind2.state, ew2.state, cu2.state) == (ind.state, ew.state, cu.state)
