"""The charts' violation marks tell the three severities apart: warning and info were the same red
ring (only critical was filled), so an on-call engineer could not see at a glance which marks
page. Each severity now has its own shape or fill (critical a filled disc, warning a thick ring,
info a thin diamond), a mark of several rules at one probe takes its worst one's, and a key under
the chart (and the violation page's mini-chart) names each as drawn."""

from __future__ import annotations

import re
from datetime import timedelta

from llmscope.web.data import ChartData, ViolationMark
from llmscope.web.svg import mark_key, render_chart
from tests.api.conftest import Api
from tests.web.test_chart_marks import END, seed_rules_at_one_probe, three_rules_at_one_probe
from tests.web.test_pages import HX, login

SEVERITIES = ("critical", "warning", "info")
SHAPE = re.compile(r'<(circle|polygon) [^>]*class="violation (\w+)"')


def one_of_each() -> ChartData:
    """The chart of ``three_rules_at_one_probe`` with one lone mark per severity, and a probe
    where a warning and an info rule fired."""
    data = three_rules_at_one_probe()
    at = [END - timedelta(seconds=s) for s in (80, 70, 40, 30)]
    marks = [
        ViolationMark("v-crit", at[0], 104.0, "R1", "critical", "open"),
        ViolationMark("v-warn", at[1], 104.0, "R2", "warning", "open"),
        ViolationMark("v-info", at[2], 104.0, "R5", "info", "open"),
        ViolationMark("v-info2", at[3], 101.0, "R6", "info", "open"),
        ViolationMark("v-warn2", at[3], 101.0, "EWMA", "warning", "open"),
    ]
    return ChartData(**{**{f: getattr(data, f) for f in data.__dataclass_fields__}, "violations": marks})


def test_each_severity_has_a_mark_of_its_own() -> None:
    for width in (960, 360):
        svg = str(render_chart(one_of_each(), width=width))
        shapes = SHAPE.findall(svg)
        # One mark per probe: the lone three, then the warning + info probe in warning's style.
        assert sorted(shapes) == sorted(
            [("circle", "critical"), ("circle", "warning"), ("polygon", "info"), ("circle", "warning")]
        ), (width, shapes)
        lone = {sev: re.search(rf'href="/violations/v-{sev[:4]}">(<\w+)', svg) for sev in SEVERITIES}
        assert {sev: m[1] if m else None for sev, m in lone.items()} == {
            "critical": "<circle",
            "warning": "<circle",
            "info": "<polygon",
        }
        (group,) = re.findall(r'<g class="violation-mark">(.*?)</g>', svg, re.S)
        assert SHAPE.findall(group) == [("circle", "warning")]  # the worst of warning and info


def test_the_key_names_each_severity_drawn_as_on_the_chart() -> None:
    key = str(mark_key())  # the violation page's: every severity
    items = re.findall(r'data-severity="(\w+)"><svg [^>]*>(.*?)</svg> (\w+)</span>', key)
    assert [(sev, label) for sev, _, label in items] == [(s, s) for s in SEVERITIES]
    assert [SHAPE.findall(body) for _, body, _ in items] == [
        [("circle", "critical")],
        [("circle", "warning")],
        [("polygon", "info")],
    ]
    assert "several rules at one probe" in key
    assert 'class="violation-more"' in key
    assert 'class="violation-count"' in key


async def test_the_dashboard_and_the_violation_page_show_the_key(api: Api) -> None:
    await seed_rules_at_one_probe(api)
    client = await login(api)
    params = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "1"}
    for headers in ({}, {**HX, "HX-Target": "chart-panel"}):
        # The key names the severities the chart shows: those of its filter and above.
        for least, named in (("info", SEVERITIES), ("warning", SEVERITIES[:2]), ("critical", SEVERITIES[:1])):
            r = await client.get("/dashboard", params={**params, "severity": least}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.text.count('<p class="mark-key small">') == 1
            assert tuple(re.findall(r'data-severity="(\w+)"', r.text)) == named
    page = (await client.get("/violations/v-r1")).text
    around = page.split('<section class="card" id="around">')[1].split("</section>")[0]
    assert around.count('<p class="mark-key small">') == 1
    assert "Red circles" not in around
