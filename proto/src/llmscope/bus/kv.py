"""JetStream key-value buckets: opened, or created on first use, and watched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
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
