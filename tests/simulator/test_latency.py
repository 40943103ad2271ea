from __future__ import annotations

import numpy as np
import pytest

from llmscope.simulator.latency import Plan, count_tokens, natural_length, plan_request
from llmscope.simulator.models import SimModel

MODEL = SimModel(
    name="m", host="h", tokens_per_s=50, prompt_tokens_per_s=500, overhead_s=0.02, load_s=2.0, sigma=0.1
)


def _plan(
    prompt: str = "hello there",
    max_tokens: int | None = 32,
    seed: int = 1,
    *,
    cold: bool,
    factor: float = 1.0,
    time_scale: float = 1.0,
    empty: bool = False,
) -> Plan:
    rng = np.random.default_rng(seed)
    return plan_request(
        MODEL, prompt, max_tokens, rng, cold=cold, factor=factor, time_scale=time_scale, empty=empty
    )


def test_same_seed_same_plan() -> None:
    assert _plan(cold=False) == _plan(cold=False)
    assert _plan(cold=False) != _plan(cold=False, seed=2)


def test_token_cap_and_done_reason() -> None:
    long_prompt = "x" * 400
    assert natural_length(long_prompt) > 8
    capped = _plan(long_prompt, max_tokens=8, cold=False)
    assert capped.eval_count == 8
    assert capped.done_reason == "length"
    free = _plan(long_prompt, max_tokens=10_000, cold=False)
    assert free.eval_count == natural_length(long_prompt)
    assert free.done_reason == "stop"


def test_phases_add_up_and_time_grows_with_tokens() -> None:
    plan = _plan(cold=False)
    assert plan.total_s == pytest.approx(plan.head_s + plan.load_s + plan.prompt_eval_s + plan.eval_s)
    assert plan.ttft_s == plan.token_times[0]
    assert list(plan.token_times) == sorted(plan.token_times)
    short = np.median([_plan("y" * 40, cold=False, seed=s).prompt_eval_s for s in range(30)])
    long = np.median([_plan("y" * 4000, cold=False, seed=s).prompt_eval_s for s in range(30)])
    assert long / short == pytest.approx(count_tokens("y" * 4000) / count_tokens("y" * 40), rel=0.2)
    few = np.median([_plan(max_tokens=8, cold=False, seed=s).eval_s for s in range(30)])
    many = np.median([_plan(max_tokens=32, cold=False, seed=s).eval_s for s in range(30)])
    assert many / few == pytest.approx(4, rel=0.2)


def test_cold_start_pays_the_load_and_factor_scales_the_rest() -> None:
    warm, cold = _plan(cold=False), _plan(cold=True)
    assert warm.load_s == 0
    assert cold.load_s == pytest.approx(2.0, rel=0.5)
    slow = _plan(cold=True, factor=3.0)
    assert slow.load_s == cold.load_s
    assert slow.total_s - slow.load_s == pytest.approx(3 * (cold.total_s - cold.load_s))
    fast = _plan(cold=True, time_scale=0.1)
    assert fast.total_s == pytest.approx(cold.total_s * 0.1)


def test_empty_answers_have_no_tokens() -> None:
    plan = _plan(cold=False, empty=True)
    assert plan.eval_count == 0
    assert plan.text == ""
