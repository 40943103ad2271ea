"""llmscope.bus.layout on a real nats-server: the declared list, making it, checking it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from llmscope.bus.layout import apply, bucket_configs, layout, missing, prepare
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import PartitionMismatchError, stream_configs, telemetry_partitions
from llmscope.config.env import Env
from llmscope.config.startup import Stopped
from llmscope.proto import subjects
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually

CHECK_ONLY = BusSettings(manage_streams=False)


def test_the_setting_defaults_to_managing_and_false_checks_only() -> None:
    assert BusSettings.from_env(Env({})).manage_streams is True
    assert BusSettings.from_env(Env({"LLMSCOPE_MANAGE_STREAMS": "false"})).manage_streams is False


def test_every_bucket_named_in_subjects_is_declared() -> None:
    """A new ``subjects.*_BUCKET`` must be one more entry of ``bucket_configs``: a service whose
    user may not create buckets (compose, Kubernetes, ``up``) would otherwise wait for a bucket
    that ``llmscope setup`` never makes."""
    named = {value for name, value in vars(subjects).items() if name.endswith("_BUCKET")}
    assert named <= {c.bucket for c in bucket_configs(BusSettings())}


def test_every_bucket_a_service_opens_is_declared() -> None:
    names = {
        c.bucket
        for c in bucket_configs(BusSettings(), charts_bucket="team_charts", state_bucket="team_state")
    }
    assert names == {
        "team_charts",
        "team_state",
        subjects.SPC_CONFIG_BUCKET,
        subjects.MODELS_BUCKET,
        subjects.SETTINGS_BUCKET,
        subjects.SPC_MEMBERS_BUCKET,
    }
    declared = layout(BusSettings())
    with pytest.raises(KeyError, match="bucket_configs"):
        declared.bucket("undeclared")
    assert {b.storage for b in declared.buckets} == {StorageType.FILE}


async def test_apply_makes_everything_and_check_only_then_finds_nothing_missing(nc: NATS) -> None:
    js = nc.jetstream()
    declared = layout(BusSettings(), partitions=4)
    assert set(await missing(js, declared.streams, declared.buckets)) == {
        *(s.name for s in declared.streams),
        *(f"KV_{b.bucket}" for b in declared.buckets),
    }
    await apply(js, declared)
    await apply(js, declared)  # idempotent
    assert await missing(js, declared.streams, declared.buckets, partitions=4) == {}
    telemetry = await js.stream_info(subjects.STREAM_TELEMETRY)
    assert telemetry_partitions(telemetry.config) == 4
    await asyncio.wait_for(
        prepare(js, CHECK_ONLY, asyncio.Event(), buckets=declared.buckets, partitions=4), 10
    )
    # The engine's partition count differs: not something setup can fix, so no wait.
    with pytest.raises(PartitionMismatchError):
        await prepare(js, CHECK_ONLY, asyncio.Event(), partitions=8)


async def test_check_only_waits_names_what_is_missing_and_stops_when_asked(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmscope.bus.layout")
    js = nc.jetstream()
    declared = layout(BusSettings())
    # A stream of the right name with other subjects: incompatible, named with the reason.
    wrong = StreamConfig(name=subjects.STREAM_VIOLATIONS, subjects=["elsewhere.>"])
    await js.add_stream(wrong)
    stop = asyncio.Event()
    waiting = asyncio.create_task(prepare(js, CHECK_ONLY, stop, buckets=declared.buckets[:1]))

    def said(stream: str, problem: str) -> bool:
        return any(
            r.levelname == "ERROR"
            and r.ctx["stream"] == stream
            and problem in r.ctx["problem"]
            and "llmscope setup" in r.ctx["hint"]
            for r in caplog.records
            if hasattr(r, "ctx") and "stream" in r.ctx
        )

    await eventually(lambda: said(subjects.STREAM_TELEMETRY, "missing"), within=10, what="the missing stream")
    await eventually(
        lambda: said(subjects.STREAM_VIOLATIONS, "elsewhere"), within=10, what="the wrong subjects"
    )
    assert not waiting.done()
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 10)
    # Still nothing made: checking never creates.
    assert (await js.stream_info(subjects.STREAM_VIOLATIONS)).config.subjects == ["elsewhere.>"]
    assert subjects.STREAM_TELEMETRY in await missing(js, stream_configs(BusSettings()), [])


async def test_managing_creates_the_streams_and_the_buckets_it_is_given(nc: NATS) -> None:
    js = nc.jetstream()
    buckets = [c for c in bucket_configs(BusSettings()) if c.bucket == subjects.MODELS_BUCKET]
    await prepare(js, BusSettings(), None, buckets=buckets)
    assert await missing(js, stream_configs(BusSettings()), buckets) == {}
    await js.key_value(subjects.MODELS_BUCKET)


async def test_setup_remakes_a_members_bucket_of_an_earlier_version_on_disk(nc: NATS) -> None:
    """Earlier versions kept the members bucket in memory, which a nats-server restart drops and
    an engine user may not make again. A stream's storage cannot change in place; its content is
    renewed by the engines within seconds, so the setup step deletes and remakes it."""
    js = nc.jetstream()
    declared = layout(BusSettings())
    members = declared.bucket(subjects.SPC_MEMBERS_BUCKET)
    await js.create_key_value(dataclasses.replace(members, storage=StorageType.MEMORY))
    assert await missing(js, [], [members]) == {
        f"KV_{subjects.SPC_MEMBERS_BUCKET}": "storage memory, expected file"
    }
    await apply(js, declared)
    info = await js.stream_info(f"KV_{subjects.SPC_MEMBERS_BUCKET}")
    assert info.config.storage == StorageType.FILE
    assert info.config.max_age == members.ttl
    assert await missing(js, declared.streams, declared.buckets) == {}
    kv = await js.key_value(subjects.SPC_MEMBERS_BUCKET)
    await kv.put("m.a", b"alive")  # a usable bucket, not only a stream
    assert (await kv.get("m.a")).value == b"alive"


async def test_the_members_bucket_outlives_a_nats_server_restart(embedded_nats: EmbeddedNats) -> None:
    client = await nats.connect(embedded_nats.url)
    try:
        await apply(client.jetstream(), layout(BusSettings()))
    finally:
        await client.close()
    embedded_nats.kill()
    embedded_nats.start()
    client = await nats.connect(embedded_nats.url)
    try:
        js = client.jetstream()
        info = await js.stream_info(f"KV_{subjects.SPC_MEMBERS_BUCKET}")
        assert info.config.storage == StorageType.FILE
    finally:
        await client.close()
