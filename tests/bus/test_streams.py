from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from llmscope.bus import streams
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
    # Violations and incidents de-duplicate for a day: an engine down for hours replays nothing twice.
    for name in (subjects.STREAM_VIOLATIONS, subjects.STREAM_INCIDENTS):
        assert (await js.stream_info(name)).config.duplicate_window == 24 * 3600
    assert (await js.stream_info(subjects.STREAM_DEADLETTER)).config.duplicate_window == 30
    short = BusSettings(violations_max_age_s=600, violations_duplicate_window_s=24 * 3600)
    await ensure_streams(js, short)  # never beyond the stream's max age (the server refuses that)
    assert (await js.stream_info(subjects.STREAM_VIOLATIONS)).config.duplicate_window == 600


async def test_telemetry_is_stored_under_its_partition_as_python_computes_it(js: JetStreamContext) -> None:
    info = await js.stream_info(subjects.STREAM_TELEMETRY)
    assert streams.telemetry_partitions(info.config) == streams.DEFAULT_TELEMETRY_PARTITIONS
    names = [("ollama", "llama3.1:8b"), ("openai", "gpt-4o"), ("a", "b"), ("x.y", "z~q"), ("sim", "m7")]
    for provider, model in names:
        await js.publish(subjects.telemetry(provider, model), b"{}")
    sub = await js.pull_subscribe(subjects.TELEMETRY_ALL, stream=subjects.STREAM_TELEMETRY)
    msgs = await sub.fetch(len(names), timeout=5)
    for (provider, model), msg in zip(names, msgs, strict=True):
        k = streams.telemetry_partition(provider, model, streams.DEFAULT_TELEMETRY_PARTITIONS)
        assert msg.subject == f"{subjects.telemetry(provider, model)}.{k}"
        assert subjects.parse_telemetry(msg.subject) == (provider, model)
    for k in {streams.telemetry_partition(p, m, 16) for p, m in names}:
        psub = await js.pull_subscribe(
            subjects.telemetry_partition_filter(k), stream=subjects.STREAM_TELEMETRY
        )
        got = await psub.fetch(10, timeout=2)
        assert {m.subject.rsplit(".", 1)[1] for m in got} == {str(k)}
        await psub.unsubscribe()


async def test_partitions_are_added_once_kept_by_others_and_never_changed(nc: NATS) -> None:
    js = nc.jetstream()
    legacy = streams.stream_configs(BusSettings())[0]  # as older versions created it
    await js.add_stream(legacy)
    await streams.ensure_streams(js, BusSettings())  # a service that does not ask: left alone
    assert streams.telemetry_partitions((await js.stream_info(legacy.name or "")).config) is None
    await streams.ensure_streams(js, BusSettings(), partitions=8)  # the SPC engine partitions it
    await streams.ensure_streams(js, BusSettings())  # others keep it
    await streams.ensure_streams(js, BusSettings(), partitions=8)  # idempotent
    assert streams.telemetry_partitions((await js.stream_info(legacy.name or "")).config) == 8
    with pytest.raises(streams.PartitionMismatchError):
        await streams.ensure_streams(js, BusSettings(), partitions=16)
    assert streams.telemetry_partitions((await js.stream_info(legacy.name or "")).config) == 8
    # The public subject is unchanged for core NATS subscribers.
    seen: list[str] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg.subject)

    sub = await nc.subscribe(subjects.TELEMETRY_ALL, cb=on_msg)
    await js.publish(subjects.telemetry("ollama", "m1"), b"{}")
    await nc.flush()
    for _ in range(1500):  # up to 30 s on a loaded machine; done at the first delivery
        if seen:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    assert seen == [subjects.telemetry("ollama", "m1")]
