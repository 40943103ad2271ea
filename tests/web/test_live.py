"""The live-update fan-out and the triggers pages render with it (no bus: see tests/api/test_live.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from llmscope.web.live import Broadcaster, LiveEvent, stream
from llmscope.web.pages import LIVE_FALLBACK_S, build_environment


def test_frame_is_one_named_event() -> None:
    frame = LiveEvent("violation-critical", {"id": "v1", "model": "a\nb"}).frame().decode()
    name, data, *rest = frame.split("\n")
    assert name == "event: violation-critical"
    assert json.loads(data.removeprefix("data: ")) == {"id": "v1", "model": "a\nb"}
    assert rest == ["", ""]  # one data line (the newline is escaped), then the blank line ending it


async def test_every_listener_gets_each_event_and_a_stalled_one_is_dropped() -> None:
    feed = Broadcaster(queue_size=2)
    with feed.subscribe() as fast, feed.subscribe() as stalled:
        feed.publish(LiveEvent("status", {"n": 1}))
        assert await fast.get() == LiveEvent("status", {"n": 1})
        feed.publish(LiveEvent("status", {"n": 2}))  # the stalled queue is full now
        assert (feed.listeners, feed.dropped) == (2, 0)
        feed.publish(LiveEvent("status", {"n": 3}))
        assert (feed.listeners, feed.dropped) == (1, 1)
        drained = [stalled.get_nowait() for _ in range(stalled.qsize())]
        assert drained[-1] is None  # its stream ends; the browser reconnects and re-reads
        assert [e.data["n"] for e in (fast.get_nowait(), fast.get_nowait()) if e] == [2, 3]
    assert feed.listeners == 0


async def test_stream_sends_events_and_heartbeats_and_ends_with_the_session() -> None:
    feed = Broadcaster()
    allowed = [True]

    async def still_allowed() -> bool:
        return allowed[0]

    chunks = stream(feed, still_allowed, heartbeat_s=0.05)
    assert (await anext(chunks)).startswith(b"retry: ")
    feed.publish(LiveEvent("incident", {"id": "i1"}))
    assert (await anext(chunks)).startswith(b"event: incident\n")
    assert await anext(chunks) == b": heartbeat\n\n"
    allowed[0] = False  # the session was revoked or expired
    assert [c async for c in chunks] == []
    assert feed.listeners == 0


async def test_closed_feed_ends_streams_opened_after_it() -> None:
    feed = Broadcaster()
    feed.close_all()

    async def yes() -> bool:
        return True

    assert [c async for c in stream(feed, yes)][1:] == []
    feed.open()
    chunks = stream(feed, yes)
    await anext(chunks)
    feed.publish(LiveEvent("status", {}))
    assert (await asyncio.wait_for(anext(chunks), 5)).startswith(b"event: status")


def test_live_trigger_listens_when_signed_in_and_polls_otherwise() -> None:
    env = build_environment()
    tpl = env.from_string("{{ live_trigger('status incident', 5) }}")
    signed_in = SimpleNamespace(state=SimpleNamespace(csrf_token="t"))
    anonymous = SimpleNamespace(state=SimpleNamespace())
    # Live: the events, a re-read when the stream resumes, and the fallback poll only while the
    # stream is down (static/live.js sets llmscopeLive while it is open).
    assert tpl.render(request=signed_in, live=True) == (
        "sse:status delay:1s, sse:incident delay:1s, live-resumed from:body, "
        f"every {LIVE_FALLBACK_S:g}s [!llmscopeLive]"
    )
    assert tpl.render(request=anonymous, live=True) == "every 5s"
    assert tpl.render(request=signed_in, live=False) == "every 5s"
