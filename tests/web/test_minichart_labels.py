"""The violation's mini-chart labels its first and last probe and the trigger: a trigger close to
an end (a violation seconds old has few probes after it) must not print over that end's label."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

from llmscope.web.data import ContextPoint, Violation
from llmscope.web.minichart import render_minichart

T0 = datetime(2026, 12, 6, 20, 18, 16, tzinfo=UTC)


def _violation() -> Violation:
    limits = {"center": 131.6, "ucl": 444.0, "lcl": 39.0, "sigma": 0.4, "transform": "log"}
    return Violation(
        id="v",
        episode_id="v",
        ts=T0,
        provider="openai",
        model="tiny-llama",
        target="real-llama",
        host="h",
        prompt_id="simple-capital",
        metric="latency_ms",
        chart="individuals",
        chart_key="k",
        rule="SPIKE",
        rule_name="spike",
        severity="critical",
        value=6327.0,
        statistic=None,
        deviation_sigma=9.5,
        limits=limits,
        baseline={"id": "b", "n": 60, "reason": "initial baseline"},
        point_ids=["p30"],
        point_values=[6327.0],
        point_ts=[T0],
        system={},
        state="open",
    )


def _points(n: int, trigger: int) -> list[ContextPoint]:
    return [
        ContextPoint(
            id=f"p{i}",
            ts=T0 + timedelta(seconds=3 * i),
            status="ok",
            value=6327.0 if i == trigger else 150.0,
            latency_ms=150.0,
            ttft_ms=40.0,
            tokens_per_s=150.0,
            in_pattern=i == trigger,
            trigger=i == trigger,
        )
        for i in range(n)
    ]


def _labels(svg: str) -> list[tuple[float, str]]:
    return [
        (float(x), t)
        for x, t in re.findall(r'<text x="([\d.]+)"[^>]*class="tick"[^>]*>(\d\d:\d\d:\d\d)<', svg)
    ]


def test_a_trigger_next_to_the_last_probe_takes_its_label() -> None:
    svg = str(render_minichart(_violation(), _points(33, trigger=31)))
    labels = _labels(svg)
    xs = sorted(x for x, _ in labels)
    # ~55 wide each, anchored at an end or the middle: 84 apart and none overprints another.
    assert all(b - a >= 84 for a, b in itertools.pairwise(xs)), labels
    assert "20:19:49" in [t for _, t in labels]  # the trigger, 31 x 3 s after T0
    assert "20:18:16" in [t for _, t in labels]  # the first probe keeps its label


def test_a_trigger_in_the_middle_leaves_both_ends_labelled() -> None:
    svg = str(render_minichart(_violation(), _points(61, trigger=30)))
    assert [t for _, t in _labels(svg)] == ["20:18:16", "20:19:46", "20:21:16"]


def test_a_phones_mini_chart_keeps_its_plot_wide_and_its_line_labels_inside() -> None:
    svg = str(render_minichart(_violation(), _points(61, trigger=30), width=380))
    plot = re.search(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" class="plot-bg"/>', svg)
    assert plot is not None
    left, width = float(plot[1]), float(plot[2])
    assert width / 380 >= 0.85  # the laptop's margins left it 56 %
    inside = re.findall(r'<text x="([\d.]+)" y="[\d.]+" class="\w+-label inside">(\w+) ', svg)
    assert "UCL" in {name for _, name in inside}  # (LCL and CL are within a label of it here)
    assert all(left < float(x) < left + width for x, _ in inside)
    assert [t for _, t in _labels(svg)] == ["20:18:16", "20:19:46", "20:21:16"]
