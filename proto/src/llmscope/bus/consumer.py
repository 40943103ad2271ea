"""A durable JetStream pull consumer that owns acknowledgement, redelivery and dead-lettering.

Handlers know nothing of NATS: they take a batch of decoded deliveries and return, or raise.
- a message that does not decode is dead-lettered with the decoder's reason, then terminated;
- the handler's success acks the batch (so a message is acked only after its effect is durable);
- the handler may reject single messages (dead-lettered with its reason, then terminated);
- a handler exception naks the batch with backoff; after ``max_deliver`` tries the message is
  dead-lettered with the last error instead of being dropped by the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from llmscope.bus.deadletter import DeadLetters
from llmscope.config.logs import get_logger
from llmscope.proto.codec import DecodeError

T = TypeVar("T")

log = get_logger("llmscope.bus.consumer")


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """One decoded message and where it sits in the stream."""

    event: T
    subject: str
    stream_seq: int
    num_delivered: int
    msg: Msg = field(repr=False, compare=False)


BatchHandler = Callable[[Sequence[Delivery[T]]], Awaitable[Mapping[int, str] | None]]
"""Handles a batch; returns {index in batch: reason} for messages it rejects, or None."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    batch_size: int = 256
    fetch_timeout: float = 1.0
    ack_wait: float = 60.0
    max_deliver: int = 8
    backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
    max_ack_pending: int = 10_000


class DurableConsumer(Generic[T]):
    """Pulls batches from a durable consumer and applies the ack policy around a handler."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        decode: Callable[[bytes], T],
        handler: BatchHandler[T],
        dead_letters: DeadLetters,
        options: ConsumerOptions | None = None,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._filters = list(filter_subjects)
        self._decode = decode
        self._handler = handler
        self._dead_letters = dead_letters
        self._opts = options or ConsumerOptions()
        self._log = log.bind(stream=stream, consumer=durable)
        self.processed = 0
        self.dead_lettered = 0

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self._durable,
            name=self._durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._opts.ack_wait,
            # The server stops redelivering after max_deliver; we dead-letter on the last try ourselves.
            max_deliver=self._opts.max_deliver + 1,
            max_ack_pending=self._opts.max_ack_pending,
            filter_subjects=self._filters if len(self._filters) > 1 else None,
            filter_subject=self._filters[0] if len(self._filters) == 1 else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished before returning."""
        await self._js.add_consumer(self._stream, config=self.consumer_config())
        sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        self._log.info("consuming", filters=",".join(self._filters))
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self._opts.batch_size, timeout=self._opts.fetch_timeout)
                except (TimeoutError, NatsTimeoutError):
                    continue
                await self.process(msgs)
        finally:
            await sub.unsubscribe()

    async def process(self, msgs: Sequence[Msg]) -> None:
        deliveries: list[Delivery[T]] = []
        for msg in msgs:
            meta = msg.metadata
            try:
                event = self._decode(msg.data)
            except (DecodeError, ValueError) as exc:
                await self._reject(msg, f"malformed message: {exc}", meta.sequence.stream)
                continue
            deliveries.append(Delivery(event, msg.subject, meta.sequence.stream, meta.num_delivered, msg))
        if not deliveries:
            return
        try:
            rejected = await self._handler(deliveries) or {}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("handler failed; will redeliver", batch=len(deliveries))
            await self._retry_or_dead_letter(deliveries, exc)
            return
        for index, delivery in enumerate(deliveries):
            if index in rejected:
                await self._reject(delivery.msg, rejected[index], delivery.stream_seq)
            else:
                await delivery.msg.ack()
                self.processed += 1

    async def _retry_or_dead_letter(self, deliveries: Sequence[Delivery[T]], exc: Exception) -> None:
        for delivery in deliveries:
            if delivery.num_delivered >= self._opts.max_deliver:
                reason = f"handler failed {delivery.num_delivered} times, last error: {exc!r}"
                await self._reject(delivery.msg, reason, delivery.stream_seq)
            else:
                backoff = self._opts.backoff
                delay = backoff[min(delivery.num_delivered - 1, len(backoff) - 1)]
                await delivery.msg.nak(delay=delay)

    async def _reject(self, msg: Msg, reason: str, stream_seq: int) -> None:
        # The dead letter is published (and acked by JetStream) before the original is dropped.
        await self._dead_letters.send(
            subject=msg.subject, payload=msg.data, reason=reason, stream_seq=stream_seq
        )
        await msg.term()
        self.dead_lettered += 1
        self._log.warning("dead-lettered", subject=msg.subject, seq=stream_seq, reason=reason[:200])
