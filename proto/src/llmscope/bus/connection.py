"""Connecting to NATS with reconnects that never give up (services outlive NATS restarts)."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NATS

from llmscope.config.logs import get_logger

log = get_logger("llmscope.bus")


async def connect(url: str, name: str, *, connect_timeout: float = 5.0) -> NATS:
    """Connect, retrying until the server answers; later drops reconnect forever."""

    async def on_disconnect() -> None:
        log.warning("disconnected from NATS", client=name)

    async def on_reconnect() -> None:
        log.info("reconnected to NATS", client=name)

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error", client=name, error=repr(exc))

    return await nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1.0,
        retry_on_failed_connect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
