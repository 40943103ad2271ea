"""The overview on the whole stack (issue 11): an injected outage is the overview's worst row
within 10 s, linking its AVAILABILITY episode, whose page lists the failed probes with their kind
and error text. Read as a signed-in browser reads them: the pages' HTML.

Two simulated models, so "worst" means something: the one taken down must move above the other.
Metric charts never freeze their limits here (a baseline longer than the test): the availability
chart is the only one that speaks. bench/overview_outage_check.py measures the same on the demo
stack, at its probe pace, once its charts are armed.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.overview_page import Row, failed_probes, overview_rows, sign_in
from tests.e2e.stack import llmscope_up, wait_for

pytestmark = pytest.mark.e2e

DOWN, UP = "llama3.1:8b", "qwen2.5:7b"
WITHIN_S = 10.0
FAILURE_KINDS = {"timeout", "refused", "http_4xx", "http_5xx", "rate_limited", "overloaded", "empty_response"}


def _rows(browser: httpx.Client) -> list[Row]:
    reply = browser.get("/")
    return overview_rows(reply.text) if reply.status_code == 200 else []


def test_an_outage_is_the_overviews_worst_row_within_10_s_and_its_page_lists_the_failed_probes(
    data_dir: Path,
) -> None:
    env = {
        "LLMSCOPE_SIM_MODELS": f"{DOWN}@sim-gpu-1 {UP}@sim-gpu-2",
        "LLMSCOPE_SIM_SEED": "11",
        "LLMSCOPE_SIM_TIME_SCALE": "0.01",
        "LLMSCOPE_PROBER_INTERVAL_S": "0.05",
        "LLMSCOPE_SPC_BASELINE_N": "1000000",
    }
    with (
        llmscope_up(data_dir, env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=10) as browser,
    ):
        sign_in(browser, stack.api_key)

        def both_up() -> bool:
            rows = _rows(browser)
            return sorted(r.model for r in rows) == [DOWN, UP] and all(r.status != "outage" for r in rows)

        # Both models probed and up (a first probe may fail while the simulator starts).
        wait_for(both_up, 120, what=lambda: f"both models on the overview, neither down\n{stack.log()}")
        down = stack.llmscope("sim", "inject", "outage", "--model", DOWN)
        injected = time.monotonic()
        assert down.returncode == 0, down.stderr

        def worst() -> Row | None:
            rows = _rows(browser)
            return rows[0] if rows and rows[0].model == DOWN and rows[0].status == "outage" else None

        wait_for(worst, 60, interval=0.25, what=lambda: f"{DOWN} the worst row\n{stack.log()}")
        took = time.monotonic() - injected
        assert took <= WITHIN_S, f"{DOWN} became the overview's worst row {took:.1f} s after the outage"
        rows = _rows(browser)
        assert [r.model for r in rows] == [DOWN, UP]
        assert rows[1].status != "outage", rows

        def linked() -> tuple[str, str] | None:
            first = _rows(browser)[0]
            return next((e for e in first.episodes if e[1] == "AVAILABILITY"), None)

        episode = wait_for(
            linked, 60, what=lambda: f"the AVAILABILITY episode linked from the row\n{stack.log()}"
        )
        assert isinstance(episode, tuple)
        page = browser.get(f"/violations/{episode[0]}")
        assert page.status_code == 200, page.text
        failed = failed_probes(page.text)
        assert failed, f"no failed probe listed on the violation page:\n{page.text}"
        for probe in failed:
            assert probe.kind in FAILURE_KINDS, probe
            assert probe.error, probe
        # The simulator's outage answers 500 by default.
        assert {p.kind for p in failed} == {"http_5xx"}, failed
