"""The dashboard over a real SPC engine: collecting, armed, targets, re-baseline from the page."""

from __future__ import annotations

import re

import pytest
from nats.js import JetStreamContext

from llmscope.api.persister import store_violations
from llmscope.proto.charts import chart_key
from llmscope.web.pages import _duration
from tests.api.conftest import Api
from tests.api.engine import BASELINE_N, eventually, feed, running_engine, wait_progress
from tests.api.factories import telemetry, violation
from tests.api.test_charts import probes
from tests.web.test_pages import HX, is_full_page, login

pytestmark = pytest.mark.usefixtures("js")

PANEL = {**HX, "HX-Target": "chart-panel"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "–"),
        (30, "30 seconds"),
        (1, "1 second"),
        (150, "2.5 minutes"),
        (3 * 3600, "3 hours"),
        (9 * 86400, "9 days"),
        (36 * 3600, "36 hours"),
        (3 * 365.25 * 86400, "3 years"),
    ],
)
def test_durations_read_like_a_person_would_say_them(seconds: float | None, text: str) -> None:
    assert _duration(seconds) == text


async def test_collecting_then_armed_with_and_without_htmx(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 5)
    async with running_engine(nats_url):
        await feed(api, js, events[:12])
        await wait_progress(api, events[0], 12, "collecting")
        for headers in ({}, PANEL):
            r = await client.get("/dashboard", headers=headers)
            assert r.status_code == 200
            assert is_full_page(r.text) == (headers == {})
            assert f"collecting baseline 12/{BASELINE_N}" in r.text
            assert f'<progress class="baseline-progress" max="{BASELINE_N}" value="12">' in r.text
            assert 'class="center"' not in r.text

        await feed(api, js, events[12:])
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
    for headers in ({}, PANEL):
        r = await client.get("/dashboard", headers=headers)
        assert r.status_code == 200
        assert is_full_page(r.text) == (headers == {})
        assert '<span class="badge armed">armed</span>' in r.text
        # The engine's expected interval for the model it fitted, at one probe per 2 s.
        assert record.view is not None
        assert record.view.arl0_critical is not None
        match = re.search(r"about one false alarm per ([\d.]+) days", r.text)
        assert match, r.text
        assert float(match.group(1)) == pytest.approx(record.view.arl0_critical * 2 / 86_400, rel=0.1)
        assert "baseline of 30 probes by engine (initial baseline)" in r.text
        assert 'class="center"' in r.text  # the engine's limits and zones are drawn
        assert r.text.count('class="zone"') == 4
        assert "collecting baseline" not in r.text


async def test_the_overview_shows_the_false_alarm_budget_of_the_armed_charts(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 5)
    async with running_engine(nats_url):
        await feed(api, js, events)
        await wait_progress(api, events[0], BASELINE_N, "armed")
        records = await api.store.charts.list()
    armed = [r for r in records if r.view is not None and r.view.phase == "armed"]
    assert armed
    # One probe every 2 s: each armed chart false-alarms once per ARL x 2 s.
    arls = [r.view.arl0_critical for r in armed if r.view and r.view.arl0_critical]
    per_day = sum(86_400 / (arl * 2) for arl in arls)
    assert per_day > 0
    for headers in ({}, {**HX, "HX-Target": "overview"}):
        page = (await client.get("/", headers=headers)).text
        assert "Pages in 24 h" in page
        match = re.search(r"False-alarm budget</dt>\s*<dd>([\d.,]+)<span", page)
        assert match, page
        assert float(match.group(1).replace(",", "")) == pytest.approx(per_day, rel=0.1, abs=0.06)
        assert f"{len(arls)} armed chart{'' if len(arls) == 1 else 's'}</div>" in page


async def test_rebaseline_from_the_dashboard(api: Api, js: JetStreamContext, nats_url: str) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 2)
    async with running_engine(nats_url):
        await feed(api, js, events)
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
        page = (await client.get("/dashboard")).text
        assert "Re-baseline this chart" in page
        assert f'name="chart_key" value="{record.key}"' in page
        assert 'hx-post="/charts/rebaseline"' in page
        form = {
            "chart_key": record.key,
            "provider": "ollama",
            "model": "llama3.1:8b",
            "prompt_id": "simple-1",
            "target": "local",
            "metric": "latency_ms",
            "hours": "1",
        }

        r = await client.post(
            "/charts/rebaseline", data={**form, "by": "ann"}, headers={**HX, "HX-Target": "rebaseline"}
        )
        assert r.status_code == 200  # htmx swaps 2xx only; the fragment says what went wrong
        assert r.text.lstrip().startswith('<div id="rebaseline"')
        assert "Not re-baselined: reason: required" in r.text

        r = await client.post("/charts/rebaseline", data={**form, "by": "ann", "reason": "new GPU"})
        assert r.status_code == 200
        assert is_full_page(r.text)
        assert "Re-baselined: the chart collects a new baseline" in r.text
        await wait_progress(api, events[0], 0, "collecting")
        r = await client.get("/dashboard", headers=PANEL)
        assert f"collecting baseline 0/{BASELINE_N}" in r.text

        bad = {**form, "chart_key": record.key.replace("latency_ms", "nope_ms"), "by": "ann", "reason": "x"}
        r = await client.post("/charts/rebaseline", data=bad)
        assert r.status_code == 409
        assert "Not re-baselined: no such chart" in r.text
    r = await client.post("/charts/rebaseline", data={**form, "by": "ann", "reason": "x"})
    assert r.status_code == 504
    assert "No SPC engine answered" in r.text
    r = await client.post(
        "/charts/rebaseline",
        data={**form, "by": "ann", "reason": "x"},
        headers={**HX, "HX-Target": "rebaseline"},
    )
    assert r.status_code == 200
    assert "No SPC engine answered" in r.text
    r = await client.post(
        "/charts/rebaseline",
        data={**form, "by": "x", "reason": "y"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    client.cookies.clear()
    r = await client.post("/charts/rebaseline", data={**form, "by": "x", "reason": "y"})
    assert r.status_code == 303  # no session: to the login page


async def test_rebaseline_a_whole_model_from_the_dashboard(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 2)
    other = probes(BASELINE_N + 2, seed=4, prompt_id="long-1")
    fed = [e for pair in zip(events, other, strict=True) for e in pair]
    form = {
        "provider": "ollama",
        "model": "llama3.1:8b",
        "prompt_id": "simple-1",
        "target": "local",
        "metric": "latency_ms",
        "hours": "1",
    }
    fragment = {**HX, "HX-Target": "rebaseline"}
    async with running_engine(nats_url):
        await feed(api, js, fed)
        availability = chart_key("ollama", "llama3.1:8b", "local", "*", "availability")

        async def all_charted() -> bool:
            record = await api.runtime.charts.get(availability)
            return record is not None and record.seq == len(fed)

        await eventually(all_charted)
        page = (await client.get("/dashboard")).text
        assert "Re-baseline every chart of ollama / llama3.1:8b" in page
        assert 'hx-post="/models/rebaseline"' in page

        for headers, status in (({}, 422), (fragment, 200)):
            r = await client.post("/models/rebaseline", data={**form, "by": "ann"}, headers=headers)
            assert r.status_code == status
            assert is_full_page(r.text) == (headers == {})
            assert "Model not re-baselined: reason: required" in r.text

        r = await client.post(
            "/models/rebaseline", data={**form, "by": "ann", "reason": "new GPU"}, headers=fragment
        )
        assert r.status_code == 200
        assert r.text.lstrip().startswith('<div id="rebaseline"')
        keys = sorted(c.key for c in await api.runtime.charts.list())
        assert f"Re-baselined {len(keys)} charts of ollama / llama3.1:8b" in r.text
        for name in ("local · simple-1 · latency_ms", "local · long-1 · ttft_ms", "local · availability"):
            assert f"<li>{name}</li>" in r.text
        for record in await api.runtime.charts.list():
            view = record.view or record.availability
            assert view is not None
            assert (view.phase, view.progress) == ("collecting", 0), record.key

        r = await client.post("/models/rebaseline", data={**form, "model": "nope", "by": "a", "reason": "b"})
        assert r.status_code == 409
        assert is_full_page(r.text)
        assert "Model not re-baselined: no charts of ollama/nope" in r.text
    r = await client.post("/models/rebaseline", data={**form, "by": "ann", "reason": "x"})
    assert r.status_code == 504
    assert "No SPC engine answered" in r.text
    r = await client.post("/models/rebaseline", data={**form, "by": "x", "reason": "y"}, headers=fragment)
    assert r.status_code == 200
    assert "No SPC engine answered" in r.text
    r = await client.post(
        "/models/rebaseline",
        data={**form, "by": "x", "reason": "y"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    client.cookies.clear()
    r = await client.post("/models/rebaseline", data={**form, "by": "x", "reason": "y"})
    assert r.status_code == 303  # no session: to the login page


async def test_target_selector_when_a_model_has_several(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    near = probes(6, target="near")
    far = [telemetry(100 + i, id=f"far-{i}", target="far") for i in range(6)]
    async with running_engine(nats_url):
        await feed(api, js, near + far)
        await wait_progress(api, near[0], 6, "collecting")
        await wait_progress(api, far[0], 6, "collecting")
    r = await client.get("/dashboard", headers={**HX, "HX-Target": "panel"})
    assert '<select name="target">' in r.text
    assert '<option value="far" selected>' in r.text  # the most recently probed
    r = await client.get("/dashboard?target=near", headers={**HX, "HX-Target": "panel"})
    assert '<option value="near" selected>' in r.text
    assert "target near" in r.text  # the chart's label
    r = await client.get("/dashboard?target=elsewhere")
    assert '<option value="far" selected>' in r.text  # unknown target: the default


async def test_rebaseline_from_a_violation(api: Api, js: JetStreamContext, nats_url: str) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 2)
    avail_key = chart_key("ollama", "llama3.1:8b", "local", "*", "availability")
    async with api.store.pool.acquire() as conn:
        await store_violations(
            conn,
            [
                violation(events[-1], id="v-latency", chart_key=""),  # from before chart keys
                violation(
                    events[-1], id="v-down", metric="availability", rule="AVAILABILITY", chart_key=avail_key
                ),
            ],
        )
    async with running_engine(nats_url):
        await feed(api, js, events)
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
        async with api.store.pool.acquire() as conn:
            await store_violations(conn, [violation(events[-1], id="v-slow", chart_key=record.key)])

        page = (await client.get("/violations/v-slow")).text
        assert "Re-baseline this chart" in page
        assert 'hx-post="/violations/v-slow/rebaseline"' in page
        assert "From LLMscope's synthetic probes." in page  # not from traffic
        assert "From real traffic" not in page
        assert "Re-baseline the availability chart" in (await client.get("/violations/v-down")).text
        assert "Re-baseline" not in (await client.get("/violations/v-latency")).text  # no chart key

        fragment = {**HX, "HX-Target": "rebaseline"}
        r = await client.post("/violations/v-slow/rebaseline", data={"by": "ann"}, headers=fragment)
        assert r.status_code == 200  # htmx swaps 2xx only; the fragment says what went wrong
        assert r.text.lstrip().startswith('<div id="rebaseline"')
        assert "Not re-baselined: reason: required" in r.text
        r = await client.post("/violations/v-slow/rebaseline", data={"by": "ann"})
        assert r.status_code == 422
        assert is_full_page(r.text)

        r = await client.post("/violations/v-slow/rebaseline", data={"by": "ann", "reason": "new GPU"})
        assert r.status_code == 200
        assert "Re-baselined: the chart collects a new baseline" in r.text
        await wait_progress(api, events[0], 0, "collecting")
        # The availability chart, armed after 200 probes: still collecting here, and re-baselined too.
        r = await client.post("/violations/v-down/rebaseline", data={"by": "bo", "reason": "proxy fixed"})
        assert r.status_code == 200, r.text
        availability = await api.runtime.charts.get(avail_key)
        assert availability is not None
        assert availability.availability is not None
        assert availability.availability.baseline_by == "bo"

        assert (
            await client.post("/violations/nope/rebaseline", data={"by": "a", "reason": "b"})
        ).status_code == 404
    r = await client.post("/violations/v-slow/rebaseline", data={"by": "ann", "reason": "again"})
    assert r.status_code == 504
    assert "No SPC engine answered" in r.text
