"""The figures of an incident's analysis table, in words with units."""

from __future__ import annotations

import msgspec

from llmscope.alerter.analysis import summarize
from llmscope.web.alerting import MetricMoveInfo
from tests.api.factories import telemetry
from tests.engine_events import availability_violation


def test_an_outage_row_names_a_failure_rate_and_a_count_not_bare_numbers() -> None:
    row = MetricMoveInfo("llama3.1:8b", "availability", 0.01, 3.0, None, 0.0, rule="AVAILABILITY")
    assert (row.baseline_text, row.observed_text, row.change_text, row.sigma_text) == (
        "1.0 % of probes failing",
        "3 failed probes in a row",
        "–",
        "–",
    )


def test_a_latency_row_carries_its_units_and_prompt() -> None:
    row = MetricMoveInfo("llama3.1:8b", "latency_ms", 103.0, 207.0, 101.0, 10.4, "short")
    assert (row.baseline_text, row.observed_text, row.change_text, row.sigma_text) == (
        "103 ms",
        "207 ms",
        "+101 %",
        "+10.40 σ",
    )
    speed = MetricMoveInfo("llama3.1:8b", "tokens_per_s", 42.0, 20.5, -51.2, -4.0)
    assert (speed.baseline_text, speed.observed_text) == ("42 tok/s", "20.5 tok/s")


async def test_an_outage_fired_during_the_baseline_has_no_failure_rate_yet() -> None:
    """The engine's AVAILABILITY violation at the 13th probe of a 40-probe baseline: its rate is
    written 0, which the table showed as "0.0 % of probes failing"; once the baseline is in, the
    rate (2 failures in 40 probes: 7.1 %)."""
    probes = [telemetry(i, id=f"m{i:03d}") for i in range(60)]
    for failing, baseline in (
        (range(10, 13), "not known yet (baseline collecting)"),
        ((7, 19, *range(45, 51)), "7.1 % of probes failing"),
    ):
        _, ev = await availability_violation(probes, failing, "v-1", baseline_n=40)
        _, moves, _ = summarize([ev])
        row = MetricMoveInfo(**msgspec.structs.asdict(moves[0]))
        assert row.baseline_text == baseline
