"""JetStream key-value buckets: opened, or created on first use, and watched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, PubAck, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from llmscope.config.logs import get_logger

log = get_logger("llmscope.bus.kv")


async def open_bucket(js: JetStreamContext, bucket: str, *, description: str, replicas: int = 1) -> KeyValue:
    """The bucket, created with file storage and history 1 when it does not exist yet."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, description=description, history=1, storage=StorageType.FILE, replicas=replicas
            )
        )


async def bucket_keys(js: JetStreamContext, bucket: str, key_filter: str = ">") -> list[str]:
    """Every key of ``bucket`` matching ``key_filter`` (a KV key wildcard), sorted; none when the
    bucket does not exist.

    Read from the stream's own subject index, which is complete at the moment of the call:
    nats-py's ``KeyValue.keys()`` and a watcher's end-of-initial-values marker can come early
    while keys are being written (nats-io/nats.py#842, #995), and this engine writes its chart
    bucket continuously. Deleted keys may still be listed (their delete marker is a message):
    a ``get`` of one raises ``KeyNotFoundError``.
    """
    prefix = f"$KV.{bucket}."
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + key_filter)
    except NotFoundError:
        return []
    return sorted(subject.removeprefix(prefix) for subject in info.state.subjects or {})


async def current_entries(
    js: JetStreamContext, kv: KeyValue, bucket: str, key_filter: str = ">"
) -> AsyncIterator[tuple[str, bytes]]:
    """The current (key, value) of every live key matching ``key_filter``, in key order."""
    for key in await bucket_keys(js, bucket, key_filter):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue  # deleted, or deleted since the listing
        if entry.value:
            yield key, entry.value


async def watch_bucket(kv: KeyValue, apply: Callable[[str, bytes | None], None], stop: asyncio.Event) -> None:
    """Feed every current key, then every change, to ``apply(key, value or None)`` until ``stop``."""
    watcher = await kv.watchall()
    try:
        while not stop.is_set():
            try:
                entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
            except NatsTimeoutError:  # nothing changed within the second
                continue
            if entry is None:  # end of the initial values
                continue
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            try:
                apply(entry.key, None if deleted else entry.value)
            except ValueError as exc:
                log.warning("ignored a malformed KV entry", key=entry.key, error=str(exc))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def put_many(kv: KeyValue, items: Sequence[tuple[str, bytes]], *, ack_wait: float = 2.0) -> None:
    """Put every ``(key, value)`` and return when JetStream stored them all (order among them not
    kept: the keys must be distinct and independent).

    Pipelined: every put is sent before any ack is awaited. One awaited ``put`` after another
    cost a round trip each, and a snapshot of a few hundred charts took about a second, every
    second, while charting waited. A put whose ack does not come within ``ack_wait`` (NATS away,
    a leader election) is written again alone with ``KeyValue.put``, which raises if it fails.
    """
    if not items:
        return
    # A KV put is a JetStream publish to the bucket's subject prefix (nats-py's KeyValue.put).
    js: JetStreamContext = kv._js
    prefix: str = kv._pre
    futures: list[asyncio.Future[PubAck]] = []
    try:
        for key, value in items:
            futures.append(await js.publish_async(prefix + key, value))
    except Exception as exc:  # e.g. too many in flight, disconnected: the rest go one by one
        log.debug("pipelined KV puts cut short", error=repr(exc))
    if futures:
        await asyncio.wait(futures, timeout=ack_wait)
    for index, (key, value) in enumerate(items):
        future = futures[index] if index < len(futures) else None
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            continue
        if future is not None and not future.done():
            future.cancel()  # a late ack is dropped; the put below gets its own
        await kv.put(key, value)
