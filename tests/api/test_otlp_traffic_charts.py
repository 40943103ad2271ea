"""Real traffic end to end on a real nats-server: OTLP spans -> the API's receiver -> the SPC
engine's per-minute subgroups (``traffic_minute.v1``) -> a traffic chart -> one page.

A "minute" is one second here (``LLMSCOPE_SPC_TRAFFIC_WINDOW_S``), so the test takes seconds;
the spans start in the seconds after they are sent, and each window closes by the wall clock
once the engine has read everything (a quiet partition)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import nats
import pytest
from nats.js import JetStreamContext

from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.charts import chart_key, is_traffic_chart
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine import service as spc
from llmscope.spc_engine.traffic import LPT_P50
from tests.alerter.harness import eventually
from tests.api.conftest import Api, serve
from tests.api.otlp_payloads import export
from tests.api.test_otlp_receiver import INGEST_KEY, PROTOBUF
from tests.api.traffic_harness import fast_traffic_settings, slowing_spans
from tests.web.test_pages import HX, is_full_page, login

WINDOWS, SLOW_FROM, PER_WINDOW = 14, 8, 8


@pytest.fixture
async def otlp_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The API with the OTLP receiver on and the persister running."""
    changed = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), persister=True)
    async with serve(changed) as running:
        yield running


async def stored(js: JetStreamContext, stream: str) -> list[bytes]:
    state = (await js.stream_info(stream)).state
    out = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        msg = await js.get_msg(stream, seq)
        assert msg.data is not None
        out.append(msg.data)
    return out


async def test_traffic_is_charted_per_minute_and_a_slowdown_pages_once(
    otlp_api: Api,
    nats_url: str,
) -> None:
    settings = fast_traffic_settings(nats_url)
    stop = asyncio.Event()
    engine = asyncio.create_task(spc.serve(settings, stop))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        first = math.ceil(time.time()) + 2  # the first window starts after the spans are sent
        spans = slowing_spans(12, first, WINDOWS, PER_WINDOW, SLOW_FROM, 3.0)
        r = await otlp_api.anon.post(
            "/v1/traces", content=export(*spans).SerializeToString(), headers=PROTOBUF
        )
        assert r.status_code == 200, r.content

        async def paged() -> bool:
            return any(
                codec.decode_as(d, ViolationEvent).state == "open"
                for d in await stored(js, subjects.STREAM_VIOLATIONS)
            )

        async def all_windows() -> bool:
            return len(await stored(js, subjects.STREAM_TRAFFIC)) >= WINDOWS

        await eventually(all_windows, within=90, what="every window closed and published")
        await eventually(paged, within=30, what="the slowdown paged")
        minutes = [codec.decode_as(d, TrafficMinuteEvent) for d in await stored(js, subjects.STREAM_TRAFFIC)]
        assert [m.ts.timestamp() for m in minutes] == [first + w for w in range(WINDOWS)]
        assert all((m.n, m.errors, m.late, m.window_s) == (PER_WINDOW, 0, 0, 1) for m in minutes)
        assert all(
            (m.service_name, m.model, m.operation) == ("checkout", "gpt-4o-mini", "chat") for m in minutes
        )
        lpt = minutes[-1].latency_per_token_ms
        assert lpt is not None
        assert 20 < lpt.p50 < 45  # 30 ms per token once slow

        violations = [
            codec.decode_as(d, ViolationEvent) for d in await stored(js, subjects.STREAM_VIOLATIONS)
        ]
        (page,) = [v for v in violations if v.state == "open"]
        assert (page.metric, page.chart, page.severity) == (LPT_P50, "subgroup", "critical")
        assert (page.target, page.prompt_id, page.direction) == ("checkout", "traffic:chat", "up")
        assert page.ts.timestamp() >= first + SLOW_FROM
        assert page.point_ids[-1] == next(m.id for m in minutes if m.ts == page.ts)
        assert page.limits.center < page.limits.ucl < page.value
        # Requests are not charted one by one: the only charts are the minutes' (no TTFT: the
        # spans are not streamed).
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        all_keys = await kv.keys()
        charts = [k for k in all_keys if not k.startswith("_")]
        assert len(charts) == 3
        assert all(is_traffic_chart(k) for k in charts)

        # The API lists them as it lists probe charts, armed, with the slow minutes above the limit.
        key = chart_key("openai", "gpt-4o-mini", "checkout", "traffic:chat", LPT_P50)

        async def every_minute_listed() -> bool:
            r = await otlp_api.client.get("/api/charts", params={"target": "checkout", "metric": LPT_P50})
            assert r.status_code == 200, r.text
            return len(r.json()) == 1 and len(r.json()[0]["traffic"]["recent"]) == WINDOWS

        await eventually(every_minute_listed, within=30, what="the chart record with every minute")
        (listed,) = (
            await otlp_api.client.get("/api/charts", params={"target": "checkout", "metric": LPT_P50})
        ).json()
        assert listed["key"] == key
        assert (listed["view"]["phase"], listed["view"]["open_episodes"]) == ("armed", ["TRAFFIC"])
        assert listed["traffic"]["service_name"] == "checkout"
        recent = listed["traffic"]["recent"]
        assert len(recent) == WINDOWS
        assert all(p["value"] > p["ucl"] for p in recent[SLOW_FROM:])

        # The dashboard: the traffic page lists the service's charts; a chart's page draws its
        # minutes against each minute's own limit; with htmx, only the chart's fragment.
        web = await login(otlp_api)
        r = await web.get("/traffic")
        assert r.status_code == 200, r.text
        assert "checkout" in r.text
        assert f"/traffic/chart?{urlencode({'chart': key})}" in r.text
        page_url = f"/traffic/chart?{urlencode({'chart': key})}"
        r = await web.get(page_url)
        assert r.status_code == 200, r.text
        assert is_full_page(r.text)
        assert '<span class="badge traffic">traffic</span>' in r.text
        assert "service checkout" in r.text
        assert r.text.count('class="point out"') >= WINDOWS - SLOW_FROM
        # The limit line names the latest minute's limit and its request count.
        assert re.search(r">UCL [\d.,]+ n=\d+<", r.text), r.text
        r = await web.get(page_url, headers={**HX, "HX-Target": "traffic-chart"})
        assert r.status_code == 200
        assert not is_full_page(r.text)
        assert r.text.lstrip().startswith('<div id="traffic-chart"')
        other = (
            await web.get("/traffic/chart", params={"chart": "openai.gpt-4o-mini.x.p.latency_ms"})
        ).status_code
        assert other == 404

        # The probe dashboard does not offer the traffic's requests as a prompt of their own.
        async def persisted() -> bool:
            async with otlp_api.store.pool.acquire() as conn:
                return bool(
                    await conn.fetchval("SELECT count(*) FROM series WHERE prompt_id = 'traffic:chat'")
                )

        await eventually(persisted, within=30, what="the traffic's requests persisted")
        r = await web.get("/dashboard")
        assert r.status_code == 200
        assert '<option value="traffic:chat"' not in r.text
        # Its violation is in the log, as any other, saying it came from traffic.
        assert (
            '<span class="badge traffic" title="real traffic (OTLP spans)">traffic</span> traffic:chat'
            in r.text
        )

        # The chart data route is for the per-request charts: it names the model's traffic charts.
        r = await otlp_api.client.get("/api/stats/spc", params={"provider": "openai", "model": "gpt-4o-mini"})
        assert r.status_code == 404
        assert "no probe telemetry" in r.json()["detail"]
        assert key in r.json()["detail"]
        params = {"provider": "openai", "model": "gpt-4o-mini", "prompt_id": "traffic:chat"}
        r = await otlp_api.client.get("/api/stats/spc", params=params)
        assert r.status_code == 404
        assert "charted per minute" in r.json()["detail"]
        assert key in r.json()["detail"]

        # Links both ways: the model's probe charts to its traffic charts and back, and the page's
        # violation to the traffic chart it came from.
        model_q = "provider=openai&amp;model=gpt-4o-mini"  # as the HTML attribute has it
        r = await web.get("/dashboard", params={"provider": "openai", "model": "gpt-4o-mini"})
        assert f'href="/traffic?{model_q}"' in r.text
        # Beside the probe chart: the model's traffic charts, their phase and the open page.
        beside = r.text[r.text.index('class="traffic traffic-beside"') :]
        beside = beside[: beside.index("</table>")]
        assert "checkout · chat" in beside
        assert f'href="{page_url.replace("&", "&amp;")}"' in beside
        assert beside.count('href="/traffic/chart?') == len(charts)
        assert beside.count('<span class="sev critical">open</span>') == 1
        r = await web.get(page_url)
        assert f'href="/dashboard?{model_q}"' in r.text

        async def violation_links_chart() -> bool:
            r = await web.get(f"/violations/{page.id}")
            return (
                r.status_code == 200
                and f'href="{page_url}"' in r.text
                and "From real traffic, charted per minute" in r.text
            )

        await eventually(violation_links_chart, within=30, what="the violation page links its chart")

        # Re-baselined through the same action as a probe chart: the page clears at once.
        r = await otlp_api.client.post(
            f"/api/charts/{key}/rebaseline", json={"by": "ops", "reason": "the slower model is intended"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["cleared"] == 1

        async def collecting() -> bool:
            got = (await otlp_api.client.get(f"/api/charts/{key}")).json()
            return bool(got["view"]["phase"] == "collecting")

        await eventually(collecting, within=30, what="the re-baselined chart collecting again")
        # And from the dashboard (the error rate chart: nothing open to clear).
        errors_key = chart_key("openai", "gpt-4o-mini", "checkout", "traffic:chat", "traffic_error_rate")
        r = await web.post(
            "/traffic/rebaseline", data={"chart_key": errors_key, "by": "ana", "reason": "new rollout"}
        )
        assert r.status_code == 200, r.text
        assert "Re-baselined: the chart collects a new baseline." in r.text
        # The toast (HX-Trigger), worded as every page's re-baseline.
        assert json.loads(r.headers["HX-Trigger"])["toast"] == {
            "message": "Traffic chart re-baselined.",
            "level": "ok",
        }
        assert "collecting 0/6 minutes" in r.text
        r = await web.post("/traffic/rebaseline", data={"chart_key": errors_key, "by": "ana"})
        assert r.status_code == 422
        assert "reason: required" in r.text
        # A model-wide re-baseline (of the service's charts, as a target's) includes them all.
        r = await otlp_api.client.post(
            "/api/charts/rebaseline",
            json={
                "provider": "openai",
                "model": "gpt-4o-mini",
                "target": "checkout",
                "by": "ops",
                "reason": "r",
            },
        )
        assert r.status_code == 200, r.text
        assert sorted(c["chart_key"] for c in r.json()["charts"]) == sorted(charts)
        violations = [
            codec.decode_as(d, ViolationEvent) for d in await stored(js, subjects.STREAM_VIOLATIONS)
        ]
        (cleared,) = [v for v in violations if v.state == "cleared"]
        assert (cleared.episode_id, cleared.chart_key) == (page.episode_id, key)
        all_keys = await kv.keys()
        # The minutes and their charts are in the snapshot the next owner would resume from.
        (key,) = [k for k in all_keys if k.startswith("_traffic.p") and k.count(".") == 2]
        snapshot = (await kv.get(key)).value or b""
        assert LPT_P50.encode() in snapshot
        assert b'"service_name":"checkout"' in snapshot
    finally:
        stop.set()
        assert await engine == 0
        await nc.close()
