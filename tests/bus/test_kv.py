"""Key-value helpers on a real nats-server: complete key listings while keys are being written,
pipelined puts."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from nats.js import JetStreamContext

from llmscope.bus.kv import bucket_keys, current_entries, open_bucket, put_many

BUCKET = "llmscope_test_kv"


async def test_listing_is_complete_while_other_keys_are_written(js: JetStreamContext) -> None:
    kv = await open_bucket(js, BUCKET, description="test")
    keys = [f"chart.{i:03d}" for i in range(150)]
    for key in keys:
        await kv.put(key, b"v0")
    await kv.put("_settings.a", b"s")
    stop = asyncio.Event()

    async def churn() -> None:
        rng = random.Random(1)
        n = 0
        while not stop.is_set():
            n += 1
            await kv.put(rng.choice(keys), f"v{n}".encode())

    writer = asyncio.create_task(churn())
    try:
        for _ in range(20):
            assert await bucket_keys(js, BUCKET, "chart.>") == keys
            assert await bucket_keys(js, BUCKET, "_settings.>") == ["_settings.a"]
    finally:
        stop.set()
        await writer
    assert len(await bucket_keys(js, BUCKET)) == len(keys) + 1


async def test_current_entries_skip_deleted_keys_and_a_missing_bucket_has_none(js: JetStreamContext) -> None:
    assert await bucket_keys(js, "llmscope_no_such_bucket") == []
    kv = await open_bucket(js, BUCKET, description="test")
    for key in ("a", "b", "c"):
        await kv.put(key, key.encode())
    await kv.delete("b")
    got = [(k, v) async for k, v in current_entries(js, kv, BUCKET)]
    assert got == [("a", b"a"), ("c", b"c")]
    with contextlib.suppress(Exception):
        await js.delete_key_value(BUCKET)


@pytest.mark.parametrize("ack_wait", [2.0, 0.0])
async def test_put_many_stores_every_key_pipelined_or_one_by_one(
    js: JetStreamContext, ack_wait: float
) -> None:
    # ack_wait 0: no pipelined ack is waited for, so every put goes again alone (the fallback).
    kv = await open_bucket(js, BUCKET, description="test")
    await kv.put("k.000", b"old")
    items = [(f"k.{i:03d}", f"v{i}".encode()) for i in range(300)]
    await put_many(kv, items, ack_wait=ack_wait)
    assert [(k, v) async for k, v in current_entries(js, kv, BUCKET)] == items
    await put_many(kv, [])
    with contextlib.suppress(Exception):
        await js.delete_key_value(BUCKET)


async def test_put_many_raises_when_the_bucket_is_gone(js: JetStreamContext) -> None:
    kv = await open_bucket(js, BUCKET, description="test")
    await js.delete_key_value(BUCKET)
    with pytest.raises(Exception):  # noqa: B017 - nats-py's no-responders or API error, as KeyValue.put raises
        await put_many(kv, [("a", b"1"), ("b", b"2")], ack_wait=0.5)
