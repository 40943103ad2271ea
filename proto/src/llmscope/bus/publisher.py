"""Publishing events to JetStream: Nats-Msg-Id = event id, retried while NATS is away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from llmscope.proto import codec
from llmscope.proto.base import Event

RETRYABLE = (NatsTimeoutError, NoRespondersError, OutboundBufferLimitError, asyncio.TimeoutError)


class PublishFailed(RuntimeError):
    """The event could not be published before the deadline."""


class Publisher:
    """Publishes events and waits for JetStream's ack; retries with backoff until a deadline."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        timeout: float = 2.0,
        deadline: float = 30.0,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self._js = js
        self._timeout = timeout
        self._deadline = deadline
        self._sleep = sleep

    async def publish(self, subject: str, event: Event, *, deadline: float | None = None) -> PubAck:
        return await self.publish_raw(subject, codec.encode(event), msg_id=event.id, deadline=deadline)

    async def publish_raw(
        self, subject: str, payload: bytes, *, msg_id: str, deadline: float | None = None
    ) -> PubAck:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (self._deadline if deadline is None else deadline)
        delay = 0.1
        while True:
            try:
                return await self._js.publish(
                    subject, payload, timeout=self._timeout, headers={"Nats-Msg-Id": msg_id}
                )
            except (*RETRYABLE, ConnectionClosedError) as exc:
                if isinstance(exc, ConnectionClosedError) or loop.time() + delay > give_up:
                    raise PublishFailed(f"publish to {subject} failed: {exc!r}") from exc
            except APIError as exc:
                # 503 "no responders"/leader elections are transient; anything else is a real refusal.
                if exc.code != 503 or loop.time() + delay > give_up:
                    raise PublishFailed(f"publish to {subject} refused: {exc}") from exc
            res = self._sleep(delay * (0.5 + random.random()))
            if asyncio.iscoroutine(res):
                await res
            delay = min(delay * 2, 5.0)
