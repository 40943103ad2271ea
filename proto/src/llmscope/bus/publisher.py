"""Publishing events to JetStream: Nats-Msg-Id = event id, retried while NATS is away.

One event at a time waits for each ack in turn (4-6k msg/s on a 2-core machine); a batch goes
pipelined with :meth:`Publisher.publish_many`, every event in flight at once and the acks
awaited together (5-7x that), with the same guarantee: it returns only when JetStream
acknowledged every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from llmscope.bus import inbox
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
        self._inbox: _AckInbox | None = None
        self._inbox_lock = asyncio.Lock()

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

    async def publish_many(
        self, events: Sequence[tuple[str, Event]], *, deadline: float | None = None
    ) -> list[PubAck]:
        """Publish ``(subject, event)`` pairs pipelined and return their acks, in order.

        Every event is sent before any ack is awaited; an event whose ack does not come within
        the timeout (NATS away, a leader election) is then published again alone, in order,
        with :meth:`publish_raw`'s retries until the deadline: its ``Nats-Msg-Id`` makes a
        resend stored once. Raises :class:`PublishFailed` like :meth:`publish`.
        """
        sends = [(subject, codec.encode(ev), ev.id) for subject, ev in events]
        return await self.publish_many_raw(sends, deadline=deadline)

    async def publish_many_raw(
        self, sends: Sequence[tuple[str, bytes, str]], *, deadline: float | None = None
    ) -> list[PubAck]:
        """:meth:`publish_many` of ``(subject, payload, msg_id)`` already encoded (the API
        encodes each event once, for its size check and for this)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (self._deadline if deadline is None else deadline)
        acks: list[PubAck | None] = [None] * len(sends)
        # One event too: the inbox's publish costs less CPU than nats-py's request (about
        # 100 against 120-150 us per event, issue 13's one-event POST /api/stats).
        if sends:
            try:
                inbox = await self._ack_inbox()
                await inbox.publish_all(sends, acks, self._timeout)
            except (*RETRYABLE, ConnectionClosedError):
                pass  # what was not acked goes one at a time below
        confirmed: list[PubAck] = []
        for index, ack in enumerate(acks):
            if ack is None:
                subject, payload, msg_id = sends[index]
                ack = await self.publish_raw(
                    subject, payload, msg_id=msg_id, deadline=max(give_up - loop.time(), 0.0)
                )
            confirmed.append(ack)
        return confirmed

    async def _ack_inbox(self) -> _AckInbox:
        async with self._inbox_lock:  # batches in flight together share one subscription
            if self._inbox is None:
                inbox = _AckInbox(self._js._nc)
                await inbox.start()
                self._inbox = inbox
            return self._inbox


class _PubAckReply(msgspec.Struct):
    """JetStream's answer to a publish: where it was stored, or why not."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: dict[str, object] | None = None


_decode_pub_ack = msgspec.json.Decoder(_PubAckReply).decode


class _Pending:
    """The acks one ``publish_all`` still waits for."""

    __slots__ = ("acks", "done", "first", "remaining")

    def __init__(self, acks: list[PubAck | None], first: int, done: asyncio.Future[None]) -> None:
        self.acks = acks
        self.first = first
        self.remaining = len(acks)
        self.done = done


class _AckInbox:
    """One subscription that collects the PubAcks of pipelined publishes.

    nats-py's ``publish_async`` costs, per message, a ``wait_for`` on a semaphore, a random token
    from the OS, a future with its callbacks and a JSON parse into a dataclass; with
    ``asyncio.wait`` over a thousand of them that was most of ``POST /api/stats``'s CPU for a list.
    Here each publish's reply subject is ``<inbox>.<n>`` (n counts up), an ack is parsed by
    msgspec and a batch has one future, done when its last ack came.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._next = 0
        self._waiting: dict[int, _Pending] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        # Each ack handled as the client's parser reads it (:func:`llmscope.bus.inbox.route`):
        # no ``Msg``, queue and task switch per ack, so the publisher resumes an iteration of the
        # loop sooner (a one-event POST /api/stats waits on one ack).
        inbox.route(self._nc, self._sub._id, self._take)

    async def stop(self) -> None:
        if self._sub is not None:
            inbox.unroute(self._nc, self._sub._id)
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_ack(self, msg: Msg) -> None:
        self._take(msg)  # nats-py's own callback, where the lean path cannot hook in

    def _take(self, msg: inbox.JsMsg) -> None:
        try:
            n = int(msg.subject[len(self._prefix) :])
        except ValueError:
            return
        pending = self._waiting.pop(n, None)
        if pending is None:  # a late ack of an abandoned batch: its message is resent alone
            return
        index = n - pending.first
        try:
            reply = _decode_pub_ack(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            reply = None
        if reply is not None and reply.error is None and reply.stream:
            pending.acks[index] = PubAck(
                stream=reply.stream, seq=reply.seq, domain=reply.domain, duplicate=reply.duplicate or None
            )
        # An error (or a no-responders status) leaves the ack None: resent alone, which raises
        # for a real refusal.
        pending.remaining -= 1
        if pending.remaining == 0 and not pending.done.done():
            pending.done.set_result(None)

    async def publish_all(
        self, sends: Sequence[tuple[str, bytes, str]], acks: list[PubAck | None], ack_wait: float
    ) -> None:
        """Send every message, then wait up to ``ack_wait`` s for their acks, filled into ``acks``."""
        first = self._next
        self._next += len(sends)
        pending = _Pending(acks, first, asyncio.get_running_loop().create_future())
        numbers = range(first, first + len(sends))
        for n in numbers:
            self._waiting[n] = pending
        try:
            publish, prefix = self._nc.publish, self._prefix
            for n, (subject, payload, msg_id) in zip(numbers, sends, strict=True):
                await publish(subject, payload, reply=f"{prefix}{n}", headers={"Nats-Msg-Id": msg_id})
            await asyncio.wait([pending.done], timeout=ack_wait)
        finally:
            for n in numbers:
                self._waiting.pop(n, None)
