from __future__ import annotations

from nats.js import JetStreamContext

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects


async def test_streams_are_created_and_updated_idempotently(js: JetStreamContext) -> None:
    await ensure_streams(js, BusSettings())
    await ensure_streams(js, BusSettings(telemetry_max_age_s=3600, duplicate_window_s=30))
    info = await js.stream_info(subjects.STREAM_TELEMETRY)
    assert info.config.max_age == 3600
    assert info.config.duplicate_window == 30
    assert info.config.subjects == [subjects.TELEMETRY_ALL]
    for name in (subjects.STREAM_VIOLATIONS, subjects.STREAM_DEADLETTER):
        assert (await js.stream_info(name)).config.storage is not None
