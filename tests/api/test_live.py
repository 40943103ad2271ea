"""Live updates: a violation published on the bus reaches a signed-in tab's event stream, on the
real stack (uvicorn on a socket, nats-server, Postgres, the persister running)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig

from llmscope.api.live import LiveNotices, notice_events, stored_notices
from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.bus.publisher import Publisher
from llmscope.proto import subjects
from llmscope.proto.charts import ChartMeta, ChartRecord, TrafficView, chart_key
from llmscope.proto.live import POINTS_PER_NOTICE, LiveNotice
from llmscope.web.auth import SESSION_COOKIE
from llmscope.web.live import point_event, traffic_event
from tests.api.conftest import API_KEY
from tests.api.factories import telemetry, violation

# Generous: the machine may be at load 10; a healthy run takes milliseconds.
WAIT_S = 30.0


@dataclasses.dataclass
class Frame:
    event: str
    data: str


async def frames(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    """Server-sent events as a browser's EventSource reads them; a comment is a frame named
    ``:`` (the stream's ``: connected`` says the tab is subscribed)."""
    event, data = "message", list[str]()
    async for line in lines:
        if line.startswith(":"):
            yield Frame(":", line[1:].strip())
        elif not line:
            if data:
                yield Frame(event, "\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())


async def next_frame(stream: AsyncIterator[Frame], event: str) -> Frame:
    async def find() -> Frame:
        async for frame in stream:
            if frame.event == event:
                return frame
        raise AssertionError(f"the stream ended before an {event!r} frame")

    return await asyncio.wait_for(find(), WAIT_S)


@contextlib.asynccontextmanager
async def signed_in(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as browser:
        r = await browser.post("/login", data={"key": API_KEY, "next": "/"})
        assert r.status_code == 303, r.text
        assert SESSION_COOKIE in browser.cookies
        yield browser


async def test_a_published_violation_reaches_the_event_stream(settings: ApiSettings, nc: NATS) -> None:
    served = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=True)
    point = telemetry(1, model="live-model")
    info = violation(point, id="live-info", rule="R5", severity="info")
    critical = violation(point, id="live-v1", rule="AVAILABILITY", severity="critical")
    async with run_api(served) as url, signed_in(url) as browser:
        page = await browser.get("/")
        assert 'sse-connect="/events"' in page.text
        assert "sse:status delay:1s" in page.text
        assert (await browser.get("/static/htmx-ext-sse.min.js")).status_code == 200
        async with httpx.AsyncClient(base_url=url) as anon:
            assert (await anon.get("/events")).status_code == 303  # to the login, like any page
            assert "sse-connect" not in (await anon.get("/status")).text

        async with browser.stream("GET", "/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = frames(response.aiter_lines())
            await next_frame(stream, ":")  # subscribed: what is published from now on arrives
            publisher = Publisher(nc.jetstream())
            for event in (info, critical):
                await publisher.publish(subjects.violations(event.provider, event.model, event.rule), event)
            first = await next_frame(stream, "violation-info")
            assert json.loads(first.data)["id"] == "live-info"
            seen = await next_frame(stream, "violation-critical")
            assert json.loads(seen.data) == {
                "id": "live-v1",
                "episode_id": "live-v1",
                "state": "open",
                "provider": critical.provider,
                "model": "live-model",
                "rule": "AVAILABILITY",
                "severity": "critical",
                "ts": critical.ts.isoformat(),
            }
            status = await next_frame(stream, "status")
            assert json.loads(status.data)["id"] == "live-v1"


async def test_open_streams_end_when_the_api_stops(settings: ApiSettings) -> None:
    """An open event stream must not hold the server's graceful shutdown (uvicorn waits for
    every response to finish)."""
    served = dataclasses.replace(settings, host="127.0.0.1", port=0)
    server = run_api(served)
    url = await server.__aenter__()
    try:
        async with signed_in(url) as browser, browser.stream("GET", "/events") as response:
            stream = frames(response.aiter_lines())
            await next_frame(stream, ":")
            await asyncio.wait_for(server.__aexit__(None, None, None), WAIT_S)
            with contextlib.suppress(httpx.RemoteProtocolError):
                async for frame in stream:
                    assert frame.event == ":", frame  # heartbeats at most, then the end
    except BaseException:
        await server.__aexit__(None, None, None)
        raise


async def test_stored_probes_reach_the_event_stream_after_they_are_stored(
    settings: ApiSettings, nc: NATS
) -> None:
    """The chart panel re-reads Postgres on ``point-<key>``: the event must follow the commit."""
    served = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=True)
    probe = telemetry(7, id="live-point-7", model="live-model")
    other = telemetry(8, id="live-point-8", model="other-model")
    name = point_event(probe.provider, "live-model")
    async with run_api(served) as url, signed_in(url) as browser:
        page = await browser.get("/dashboard", params={"provider": probe.provider, "model": "live-model"})
        assert f"sse:{name} throttle:2s" in page.text
        async with browser.stream("GET", "/events") as response:
            stream = frames(response.aiter_lines())
            await next_frame(stream, ":")
            await Publisher(nc.jetstream()).publish(subjects.telemetry(other.provider, other.model), other)
            await Publisher(nc.jetstream()).publish(subjects.telemetry(probe.provider, probe.model), probe)
            seen = await next_frame(stream, name)
            assert json.loads(seen.data) == {
                "provider": probe.provider,
                "model": "live-model",
                "ts": probe.ts.isoformat(),
            }
            conn = await asyncpg.connect(settings.database_url.get())
            try:
                stored = await conn.fetchval("SELECT count(*) FROM telemetry WHERE id = $1", probe.id)
            finally:
                await conn.close()
            assert stored == 1


def chart_record(key: str, traffic: bool) -> bytes:
    provider, model, target, prompt_id, metric = subjects.parse_kv_key(key, 5)
    meta = ChartMeta(provider=provider, model=model, target=target, prompt_id=prompt_id, metric=metric)
    view = TrafficView(service_name=target, operation="chat", kind="p", min_requests=20) if traffic else None
    return msgspec.json.encode(ChartRecord(key=key, meta=meta, traffic=view))


async def test_a_traffic_charts_new_record_reaches_the_event_stream(settings: ApiSettings, nc: NATS) -> None:
    """The traffic chart page re-reads on ``traffic-<key>`` (a minute closed: the engine wrote the
    chart's record), the traffic list on ``traffic``; a probe chart's record tells neither."""
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    key = chart_key("openai", "live-traffic", "svc", "traffic:chat", "traffic_error_rate")
    other = chart_key("openai", "live-traffic", "svc", "traffic:chat", "traffic_ttft_p50")
    probe_key = chart_key("openai", "live-traffic", "default", "p1", "latency_ms")
    await kv.put(key, chart_record(key, traffic=True))
    served = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=True)
    name = traffic_event(key)
    async with run_api(served) as url, signed_in(url) as browser:
        page = await browser.get("/traffic/chart", params={"chart": key})
        assert page.status_code == 200, page.text
        assert f"sse:{name} delay:1s, live-resumed from:body, every 30s [!llmscopeLive]" in page.text
        listing = await browser.get("/traffic")
        assert "sse:traffic delay:1s, live-resumed from:body, every 30s [!llmscopeLive]" in listing.text
        async with browser.stream("GET", "/events") as response:
            stream = frames(response.aiter_lines())
            await next_frame(stream, ":")
            # In watch order: were the probe chart's record an event, it would come before the
            # second traffic chart's (the first one's record may be replayed by a watch just started).
            await kv.put(probe_key, chart_record(probe_key, traffic=False))
            await kv.put(other, chart_record(other, traffic=True))

            async def until_other() -> list[tuple[str, str]]:
                seen: list[tuple[str, str]] = []
                async for frame in stream:
                    if frame.event != ":":
                        seen.append((frame.event, json.loads(frame.data)["chart"]))
                    if seen and seen[-1] == ("traffic", other):
                        return seen
                raise AssertionError("the stream ended before the traffic chart's frames")

            seen = await asyncio.wait_for(until_other(), WAIT_S)
            assert all(chart != probe_key for _, chart in seen), seen
            assert seen[-2:] == [(traffic_event(other), other), ("traffic", other)]
            assert traffic_event(other) != name


async def test_an_api_process_without_the_persister_streams_stored_points_and_traffic_charts(
    settings: ApiSettings, nc: NATS
) -> None:
    """A replica (``LLMSCOPE_PERSISTER=false``) neither commits probes nor watches the chart
    bucket: the process that does tells it over core NATS, and its own tabs get the events."""
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    key = chart_key("openai", "replica-traffic", "svc", "traffic:chat", "traffic_error_rate")
    probe = telemetry(9, id="replica-point-9", model="replica-model")
    name = point_event(probe.provider, "replica-model")
    writer = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=True)
    replica = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=False)
    async with (
        run_api(writer) as writer_url,
        run_api(replica) as url,
        signed_in(url) as browser,
        signed_in(writer_url) as writer_browser,
    ):
        assert url != writer_url
        async with (
            browser.stream("GET", "/events") as response,
            writer_browser.stream("GET", "/events") as writer_response,
        ):
            stream = frames(response.aiter_lines())
            writer_stream = frames(writer_response.aiter_lines())
            await next_frame(stream, ":")
            await next_frame(writer_stream, ":")
            await Publisher(nc.jetstream()).publish(subjects.telemetry(probe.provider, probe.model), probe)
            seen = await next_frame(stream, name)
            assert json.loads(seen.data) == {
                "provider": probe.provider,
                "model": "replica-model",
                "ts": probe.ts.isoformat(),
            }
            # The persister's own process hears the same notice (one path for both).
            mine = await next_frame(writer_stream, name)
            assert mine.data == seen.data
            await kv.put(key, chart_record(key, traffic=True))
            traffic = await next_frame(stream, traffic_event(key))
            assert json.loads(traffic.data) == {"chart": key}
            assert json.loads((await next_frame(stream, "traffic")).data) == {"chart": key}


def test_a_committed_batch_is_told_in_one_notice_naming_each_models_latest_probe() -> None:
    """Not a message per model: with many models a trickle's batch names a model per event."""
    events = [
        telemetry(i, id=f"batch-{i}", model=f"model-{i % (POINTS_PER_NOTICE + 10)}")
        for i in range(2 * (POINTS_PER_NOTICE + 10))
    ]
    notices = stored_notices("telemetry", events)
    assert len(notices) == 2  # POINTS_PER_NOTICE + 10 models: two notices, each well under 1 MB
    heard = [
        e
        for n in notices
        for e in notice_events(msgspec.json.decode(msgspec.json.encode(n), type=LiveNotice))
    ]
    latest = {ev.model: ev for ev in events}  # the later of each model's two probes
    assert sorted(e.name for e in heard) == sorted(point_event(ev.provider, m) for m, ev in latest.items())
    for e in heard:
        ev = latest[e.data["model"]]
        assert e.data == {"provider": ev.provider, "model": ev.model, "ts": ev.ts.isoformat()}
    assert stored_notices("violations", events) == []


async def test_batches_committed_close_together_are_told_in_one_notice(nc: NATS) -> None:
    """At a trickle every committed batch is one probe: a notice each was a NATS message
    published and one delivered back per probe event. The first batch is told at once; the ones
    committed within the interval after it, in one notice naming each model's latest probe."""
    heard: list[LiveNotice] = []
    told: dict[str, str] = {}
    batches = [telemetry(i, id=f"close-{i}", model=f"close-model-{i % 7}") for i in range(40)]
    latest = {ev.model: ev.ts.isoformat() for ev in batches}
    everything = asyncio.Event()

    async def on_notice(msg: Msg) -> None:
        notice = msgspec.json.decode(msg.data, type=LiveNotice)
        heard.append(notice)
        for e in notice_events(notice):
            told[e.data["model"]] = e.data["ts"]
        if told == latest:
            everything.set()

    await nc.subscribe(subjects.api_live(), cb=on_notice)
    await nc.flush()
    notices = LiveNotices(every_s=3600.0)  # nothing but the first notice and stop()'s
    notices.attach(nc)
    for ev in batches:
        notices.on_stored("telemetry", [ev])
    notices.on_stored("violations", [violation(batches[0])])
    await notices.stop()  # tells what is due
    await asyncio.wait_for(everything.wait(), WAIT_S)
    assert len(heard) == 2
    assert [p.model for p in heard[0].points] == [batches[0].model]


def test_a_notice_of_one_model_from_the_version_before_is_still_heard() -> None:
    probe = telemetry(3, id="old-form", model="old-model")
    old = LiveNotice(kind="stored", provider=probe.provider, model=probe.model, ts=probe.ts)
    assert [e.name for e in notice_events(old)] == [point_event(probe.provider, "old-model")]
