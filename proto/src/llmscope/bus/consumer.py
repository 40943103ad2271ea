"""A durable JetStream pull consumer that owns acknowledgement, redelivery and dead-lettering.

Handlers know nothing of NATS: they take a batch of decoded deliveries and return, or raise.
- a message that does not decode is dead-lettered with the decoder's reason, then terminated;
- the handler's success acks the batch (so a message is acked only after its effect is durable);
- the handler may reject single messages (dead-lettered with its reason, then terminated);
- a handler exception naks the batch with backoff; after ``max_deliver`` tries the message is
  dead-lettered with the last error instead of being dropped by the server;
- with ``ConsumerOptions.transient`` set, an exception it accepts (the handler's own store is
  unreachable, say) means "not processed, try later": the consumer holds the batch and calls the
  handler again with the capped backoff for as long as the outage lasts, fetching nothing else and
  telling the server the batch is still in progress so it is not redelivered meanwhile; such a
  try is never counted toward dead-lettering (the server's max_deliver is then unlimited; other
  failures are counted by this consumer, per message, in memory). An outage logs one line when it
  starts, a summary every ``outage_summary_s`` while it lasts and one line when it ends.

Batches are pulled by :class:`PullRequests`, which sends JetStream pull requests itself instead
of calling nats-py's ``fetch()``, which costs a task, a uuid and a ``wait_for`` per message:
with a no-op handler this adapter consumes about 2x as fast as ``fetch()`` + ack on the same
stream (``bench/spc_bench.py``). Acks are explicit, one per message, so naks and terms of single
messages keep their meaning (AckAll would ack a nak'd message along with the ones after it).

``ConsumerOptions.ack_all`` trades that for one ack per batch (AckAll on the batch's highest
stream sequence, after the rejected messages were terminated one by one): 1.5-2x the consume rate.
It is for a durable consumer that only this instance reads and that is recreated from a
checkpoint of its owner after a failure (the SPC engine's partitions): a handler failure naks the
batch and ends :meth:`DurableConsumer.run` with the error, so nothing after a nak'd message is
ever acked past it. ``ConsumerOptions.fill_wait`` lets an idle consumer that just woke for a
message wait that long for the burst behind it, so the handler gets batches instead of single
messages when traffic allows. ``ConsumerOptions.prefetch`` (explicit acks only) pulls the next
batch while a full one is handled; a batch fetched ahead is nak'd when an outage begins or the
consumer stops, so it never waits out ``ack_wait`` in a process that is not using it.
``ConsumerOptions.standing`` keeps one pull request open instead (:class:`StandingPull`): no
request per wake-up at a trickle, one per expiry when idle.
``ConsumerOptions.gather`` takes batches gathered on a clock shared by the process instead
(:class:`GatherPull`): idle, one open request for a single message; then, at the next tick, a
``no_wait`` pull for what was stored meanwhile, sent with every other consumer's in one write
(the SPC engine's 16 partitions: a wake-up per tick, not one per probe event).
``ConsumerOptions.concurrent`` (explicit acks only) lets the next full batch's handler start
while the previous one's still runs (the persister's telemetry: one batch COPY'd while the other
commits); each is acked when its own handler returned.

The pullers take their messages from nats-py's parser as :class:`llmscope.bus.inbox.InboxMsg`
(no ``Msg``, header dict or queue per message) and a batch's acks go in one write
(:func:`llmscope.bus.inbox.ack_many`, still one ``+ACK`` per message).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from llmscope.bus import inbox
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.inbox import JsMsg
from llmscope.bus.metrics import ConsumerMetrics
from llmscope.config.logs import get_logger
from llmscope.proto.codec import DecodeError

T = TypeVar("T")


CONSUMER_GONE = "503"
"""The status a pull gets when nothing serves its consumer's subject (no responders): the consumer
is gone (a restarted nats-server lost a memory consumer, or somebody deleted it)."""


log = get_logger("llmscope.bus.consumer")


class Delivery(Generic[T]):
    """One decoded message and where it sits in the stream.

    Immutable by convention, compared and hashed by (event, subject, stream_seq, num_delivered).
    Made for every message consumed, so kept lean: plain slots, no frozen dataclass's
    ``object.__setattr__`` per field, and the position read from the ack subject only when asked
    (the persister's explicit acks never need it): ~1 µs of the consumer's CPU per event."""

    __slots__ = ("_delivered", "_seq", "event", "msg", "subject")

    def __init__(
        self, event: T, subject: str, stream_seq: int | None, num_delivered: int | None, msg: JsMsg
    ) -> None:
        self.event = event
        self.subject = subject
        self._seq = stream_seq  # None: read from ``msg`` when first asked
        self._delivered = num_delivered
        self.msg = msg

    @property
    def stream_seq(self) -> int:
        if self._seq is None:
            self._seq, self._delivered = _position(self.msg)
        return self._seq

    @property
    def num_delivered(self) -> int:
        if self._delivered is None:
            self._seq, self._delivered = _position(self.msg)
        return self._delivered

    def _key(self) -> tuple[object, ...]:
        return (self.event, self.subject, self.stream_seq, self.num_delivered)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Delivery(event={self.event!r}, subject={self.subject!r}, stream_seq={self.stream_seq!r},"
            f" num_delivered={self.num_delivered!r})"
        )


def _pending(msg: JsMsg) -> bool:
    """Whether the consumer had messages left to deliver after ``msg`` (its ack subject's last
    token); False when the subject has another form."""
    tail = (msg.reply or "").rpartition(".")[2]
    return tail.isdigit() and tail != "0"


def _plain_ack(reply: str) -> bool:
    """The ack subject's plain form, whose tokens the readers below take by position:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    (not the form with a domain and account hash)."""
    return reply.startswith("$JS.ACK.") and reply.count(".") == 8


def _stored_ns(msg: JsMsg) -> int:
    """When JetStream stored ``msg`` (ns since the epoch, nats-server's clock: the ack subject's
    timestamp token); 0 when the subject has another form."""
    reply = msg.reply or ""
    if _plain_ack(reply):
        stamp = reply.rsplit(".", 2)[1]
        if stamp.isdigit():
            return int(stamp)
    return 0


def _stored_at(msg: JsMsg) -> float | None:
    """:func:`_stored_ns` in seconds; None when the subject has another form."""
    stored = _stored_ns(msg)
    return stored / 1e9 if stored else None


def _position(msg: JsMsg) -> tuple[int, int]:
    """(stream sequence, times delivered), read from the ack subject without nats-py's
    ``Metadata`` (a datetime and three objects per message: ~3 µs, an eighth of the adapter's cost)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        return int(tokens[5]), int(tokens[4])
    meta = msg.metadata  # the form with a domain and account hash, or anything unexpected
    return meta.sequence.stream, meta.num_delivered


def _stream_seq(msg: JsMsg) -> int:
    """The stream sequence alone (:func:`_position`'s first half): a count and a split short of
    the ack subject's last three tokens, half the time, for each message a batch acks."""
    reply = msg.reply or ""
    if _plain_ack(reply):
        return int(reply.split(".", 6)[5])
    return _position(msg)[0]


@dataclass(slots=True)
class _Batch(Generic[T]):
    """Pulled messages, decoded: deliveries for the handler, malformed ones with the reason."""

    msgs: Sequence[JsMsg]
    deliveries: list[Delivery[T]]
    malformed: list[tuple[JsMsg, str, int]]


GAP_WEIGHT = 0.125
"""Weight of the newest gap between two messages in :attr:`StandingPull.gap`."""

LATE_S = 0.001
"""A first message counts as late only beyond this much over :attr:`StandingPull.transit` (s):
the ordinary jitter of the path (a few tenths of a millisecond) cut from every linger made
10-20% more transactions at 1,000 events/s (``bench/persister_counts.py``) for nothing at the
tail; a message held up longer than this is the tail."""

SLOW_FILL_MESSAGES = 3
"""Messages a slow linger waits for beside its first (:meth:`StandingPull.linger_for`)."""

SPACING_WINDOW_NS = 100_000_000
"""The shortest time over which :attr:`StandingPull.spacing` is sampled (ns of JetStream's store
times; whole batches, so a sample may cover more): 100 events at 1,000/s, 10 at 100/s."""

SPACING_WEIGHT = 0.25
"""Weight of the newest window's spacing in :attr:`StandingPull.spacing` when the rate slowed (or
rose less than twofold): followed within half a second; a doubled rate is taken at once."""

TRANSIT_DRIFT = 1e-5
"""How much :attr:`StandingPull.transit` rises per batch before the batch's first message is
compared with it (s): a message held up for a few milliseconds barely moves it, a path slower by a
few milliseconds for good is followed within a few hundred batches, and a step of the clocks
apart by a second within 100,000 (meanwhile batches go without a linger: more transactions,
nothing lost)."""

_DECODE_SLICE = 256
"""Messages decoded between two yields to the event loop while a batch is decoded ahead."""

_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
"""SQLSTATEs of a transaction Postgres aborted to let another go on (deadlock detected,
serialization failure): the batch is held and retried as in an outage, and logged as what it is."""


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
    transient: Callable[[Exception], bool] | None = None
    """Handler errors that are waited out (retried without limit, never dead-lettered)."""
    outage_summary_s: float = 60.0
    ack_all: bool = False
    """One AckAll per batch instead of an ack per message; a handler failure ends ``run`` (see above)."""
    fill_wait: float = 0.0
    """After waking for one message, wait this long (s) before taking the rest of the batch."""
    fill_wait_max: float = 0.0
    """With ``standing`` and ``fill_wait``: while messages come further apart than ``fill_wait``,
    the linger lasts long enough for ``SLOW_FILL_MESSAGES`` more at the measured rate, up to this
    long (s; 0: never longer than ``fill_wait``). See :meth:`StandingPull.linger_for`."""
    prefetch: bool = False
    """While a full batch is handled, pull the next (explicit acks only; :meth:`DurableConsumer.run`)."""
    ack_all_every: float = 0.0
    """With ``ack_all``: send an AckAll at most this often (s); a batch handled sooner is acked
    by the next AckAll, at the latest this long after it (or when :meth:`DurableConsumer.run`
    ends). Each is still sent only after its batch's handler returned."""
    concurrent: int = 1
    """Full batches handled at once (explicit acks only): with a backlog, the next full batch's
    handler starts while the previous one's still runs (waiting on its store's COMMIT, say);
    each batch is acked when its own handler returned. A batch that is not full waits for them."""
    standing: bool = False
    """Keep one pull request open (:class:`StandingPull`, expiring after ``fetch_timeout``)
    instead of a few requests per wake-up."""
    gather: float = 0.0
    """Take messages in gathered batches on a clock shared by the process (:class:`GatherPull`):
    idle, one open request for a single message; then a ``no_wait`` pull for the rest at the next
    multiple of this many seconds of the event loop's clock (0: off). Not with ``fill_wait``,
    ``prefetch`` or ``concurrent``; it replaces ``standing``. With ``ack_all_every``, AckAlls are
    sent on those ticks too (at most ``ack_all_every`` after the last, as without them)."""
    gather_phase: float = 0.0
    """Where in the gather period this consumer's ticks fall (a fraction, 0 <= phase < 1): the
    ticks are ``gather * (k + phase)``. Consumers of one process with different phases take
    their batches at different moments, so the work of a tick comes in several smaller bursts."""
    gather_spread_from: int = 0
    """With ``gather_phase``: the consumer keeps its phase only while its last gathered batch had
    at least this many messages (0: always); after a smaller one its next tick is the common one
    (phase 0). So at a trickle the consumers of a process share one tick (one write of their
    pulls and AckAlls, one wake-up, one reply burst), not one per phase, and only a flow whose
    bursts are worth spreading is spread."""
    mem_storage: bool = False
    """Keep the consumer's state (delivered and acked sequences) in nats-server's memory, not in
    a file it rewrites (open, write, rename) up to ten times a second per consumer whose state
    moved: for a consumer its owner recreates from its own checkpoint (the SPC engine's
    partitions). A nats-server restart loses it: :meth:`DurableConsumer.run` makes it again when
    a pull finds it gone, from :meth:`DurableConsumer.consumer_config` (which a consumer that
    resumes from a sequence points after :attr:`DurableConsumer.handled_seq`)."""


class _InboxPull(abc.ABC):
    """Pull requests sent by hand to one inbox, each with its own reply subject (``<inbox>.<n>``),
    so a late status of an abandoned request never ends the current one."""

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[JsMsg] = []
        self._request = 0
        self._owed = 0  # messages the open request may still bring (0: none open)
        self.status = ""
        """Status code that ended the last request ("" when it was filled, timed out or is open)."""
        self.description = ""

    async def start(self) -> None:
        # nats-py's callback (with its Msg objects) only where the lean path cannot hook in.
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        inbox.route(self._nc, self._sub._id, self._take)

    async def stop(self) -> None:
        if self._sub is not None:
            inbox.unroute(self._nc, self._sub._id)
            await self._sub.unsubscribe()
            self._sub = None

    @abc.abstractmethod
    def _take(self, msg: JsMsg) -> None:
        """A message or a status on the inbox: each way of pulling reacts in its own way (a plain
        call from the client's parser on the lean path: no coroutine per message)."""

    async def _on_msg(self, msg: JsMsg) -> None:
        self._take(msg)  # nats-py's own callback, where the lean path cannot hook in

    def _ends_request(self, msg: JsMsg, status: str) -> bool:
        """Whether ``msg`` is the status that ends the current request (kept in :attr:`status`)."""
        if status == "100" or msg.subject != f"{self._inbox}.{self._request}":
            return False
        # 404 no messages, 408 request expired, 409 consumer deleted/leadership change...
        self.status = status
        self.description = ((msg.headers or {}).get("Description") or "").strip()
        return True


class PullRequests(_InboxPull):
    """Pulls batches from a durable consumer with pull requests sent by hand to one inbox.

    A batch is a ``no_wait`` request for up to ``batch`` messages (the server sends what it has,
    then a status that ends the request); when that finds nothing, a long poll for a single
    message that expires after ``expires`` seconds, so an idle consumer wakes for the first new
    message at once (``fetch()`` waited out its timeout to fill a batch) and the burst behind it
    comes with the next ``no_wait`` request. With a fill wait, a ``no_wait`` request that found
    the stream drained is not followed by another: the next wake-up starts with the long poll.
    Each request has its
    own reply subject (``<inbox>.<n>``), so a late status of an abandoned request never ends the
    current one; messages of an abandoned request still arrive and join the next batch.
    """

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        super().__init__(nc, stream, durable)
        self._ended = asyncio.Event()
        self._drained = False  # the last ``no_wait`` pull ended before it was filled

    def _take(self, msg: JsMsg) -> None:
        status = inbox.status_of(msg)
        if not status:
            self._buffer.append(msg)
            self._owed -= 1
            if self._owed <= 0:
                self._ended.set()
        elif self._ends_request(msg, status):
            self._ended.set()

    async def _pull(self, batch: int, expires: float, *, no_wait: bool) -> None:
        self._request += 1
        self._owed = batch
        self.status = self.description = ""
        self._ended.clear()
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        await self._nc.publish(
            self._api, json.dumps(request).encode(), reply=f"{self._inbox}.{self._request}"
        )
        try:
            # The margin covers the server's own expiry; a request lost to a reconnect ends here.
            await asyncio.wait_for(self._ended.wait(), expires + 0.5)
        except TimeoutError:
            self._request += 1  # whatever that request still sends is no longer awaited

    async def fetch(self, batch: int, expires: float, fill_wait: float = 0.0) -> list[JsMsg]:
        """Up to ``batch`` messages (more only when an abandoned request's arrive late); [] when idle.

        ``fill_wait``: after waking for a first message, wait that long and take what came since."""
        if not self._buffer and not (self._drained and fill_wait > 0):
            await self._drain(batch, expires)
        if not self._buffer:
            # After a pull that found the stream drained, a trickle goes straight to the long
            # poll (what arrived meanwhile comes at once, the rest after the fill wait): two
            # requests per wake-up, not three.
            await self._pull(1, expires, no_wait=False)
            if self._buffer and fill_wait > 0 and batch > 1:
                await asyncio.sleep(fill_wait)  # a linger, as Kafka's linger.ms: batches, not singles
                await self._drain(batch - len(self._buffer), expires)
        msgs, self._buffer = self._buffer, []
        return msgs

    async def _drain(self, batch: int, expires: float) -> None:
        await self._pull(batch, expires, no_wait=True)
        self._drained = self._owed > 0


class _HeldPull(_InboxPull):
    """A puller that holds what was delivered until :meth:`fetch` hands it over, with one expiry
    timer per request and a wait that :meth:`interrupt` ends (:class:`StandingPull`,
    :class:`GatherPull`)."""

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        super().__init__(nc, stream, durable)
        self._expiry: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._interrupted = False
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        await super().stop()

    def interrupt(self) -> None:
        """End a wait in :meth:`fetch` now (the consumer is stopping)."""
        self._interrupted = True
        self._ready.set()

    def taken_meanwhile(self) -> list[JsMsg]:
        """Messages delivered and not handed over by :meth:`fetch` yet."""
        return list(self._buffer)

    def give_back(self) -> list[JsMsg]:
        """Empty the buffer (after :meth:`stop`): what the caller should nak."""
        msgs, self._buffer = self._buffer, []
        return msgs

    def _expired(self, request: int) -> None:
        # No status came for the request within its expiry and the margin: lost (a reconnect).
        if request == self._request and self._owed > 0:
            self._owed = 0
            self._request += 1  # whatever that request still sends is no longer awaited
            self._ready.set()

    async def _send(self, batch: int, expires: float, *, no_wait: bool = False) -> None:
        """Send a request for ``batch`` messages (``no_wait``: what is stored now, then a status;
        else held open until filled or ``expires``)."""
        self._request += 1
        self._owed = batch
        self.status = self.description = ""
        if self._expiry is not None:
            self._expiry.cancel()
        # One timer per request, not an ``asyncio.wait_for`` (a task and a timer) per wake-up.
        # The margin covers the server's own expiry.
        self._expiry = self._loop.call_later(expires + 0.5, self._expired, self._request)
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        reply = f"{self._inbox}.{self._request}"
        await self._nc.publish(self._api, json.dumps(request).encode(), reply=reply)


class StandingPull(_HeldPull):
    """Keeps one pull request open that the server fills as messages are stored.

    :class:`PullRequests` sends two or three requests per wake-up (a ``no_wait`` pull, a long poll
    for one message, the ``no_wait`` pull after it) and, idle, two per ``expires``: at a trickle
    (a partition of the SPC engine gets a few probe events a second) that is a request, a status
    and a wake-up per event, and 16 idle partitions cost 32 requests a second. Here one request
    for ``batch`` messages stays open until it is filled or expires: each message is handed over
    as it arrives (the messages stored while the handler runs make the next batch), and the next
    request is sent as soon as a batch is taken from a filled one. Idle, a partition costs one
    request and one expiry status per ``expires``.

    With a fill wait (the persister), a batch is handed over once its first message has waited
    that long (a linger counted from the first message, as Kafka's ``linger.ms``), or sooner when
    the arrival rate says no other message will come before then (the gap between messages,
    smoothed: :attr:`gap`): at a rate too low to fill anything in the wait the linger would only
    add latency (at 100 events/s, 3 ms to each), while under load it still gathers batches. While
    the newest message says more are pending for the consumer (the last
    token of its ack subject) the open request is left to fill the batch: with a backlog the
    handler still gets full batches, as from a ``no_wait`` pull.

    The linger is counted from when the first message was stored, not from when it arrived here:
    one that arrives late (this process's loop or nats-server was busy: in the API's process
    the loop also serves the POSTs) has spent part of its wait already, and waits only the
    rest, or nothing. Its
    lateness is its transit (now less the stored time in its ack subject, nats-server's clock)
    less the smallest transit seen lately (:attr:`transit`), so a difference between the two
    hosts' clocks cancels out, and it counts only beyond ``LATE_S`` (the path's ordinary jitter
    is no reason to write smaller batches). A late message is the tail of the latency: the batches it cuts
    short are few.

    With AckAll, for a consumer that nobody else reads (the SPC engine's partitions): messages
    delivered to the open request and not yet taken when the consumer stops are not acked, and
    are delivered again to the consumer's next reader (which recreates it from its checkpoint).
    With explicit acks (the persister's consumers, which several processes may share): those are
    nak'd once the inbox is unsubscribed (the server drops a request whose reply subject lost
    its interest, so nothing more comes to it), and while a batch is held through an outage the
    ones that came meanwhile are kept in progress with it. A request lost with the connection is
    given up after ``expires`` + 0.5 s.
    """

    def __init__(self, nc: NATS, stream: str, durable: str, fill_wait_max: float = 0.0) -> None:
        super().__init__(nc, stream, durable)
        self.fill_wait_max = fill_wait_max
        self._first_at = 0.0  # when the oldest message in the buffer arrived
        self._last_at = float("-inf")  # when the newest message arrived
        self.gap = 0.0
        """The time between two messages' arrivals here, smoothed (s): 0 until one has come, so
        the first messages linger as before the rate is known."""
        self._gap_cap = 0.0  # one long pause counts as this much (0: no linger, no gaps measured)
        self.spacing = 0.0
        """The time between two messages as JetStream stored them, over whole batches, smoothed
        (s; 0: not known yet): what the slow linger waits on (:meth:`linger_for`)."""
        self._taken = 0  # messages taken since the start
        self._spaced_from = (0, 0)  # the last batch's first message: (its store time in ns, _taken)
        # While a linger waits (:meth:`_linger`): when it ends, and the batch it fills. A message
        # that cannot end it early is only kept: no wake-up of the waiting task per message.
        self._lingering_until = float("inf")
        self._lingering_batch = 0
        self.transit = float("inf")
        """The smallest time from JetStream's store to this process seen lately (s, across the
        two clocks): a first message that took longer is late by the difference."""
        self._wall = time.time

    def _take(self, msg: JsMsg) -> None:
        status = inbox.status_of(msg)
        if not status:
            if self._gap_cap or not self._buffer:  # no clock read per message without a linger
                now = self._loop.time()
                if not self._buffer:
                    self._first_at = now - self._lateness(msg) if self._gap_cap else now
                    if self.fill_wait_max:
                        self._measure_spacing(msg)
                if self._gap_cap:
                    # An exponentially weighted mean of the gaps (weight 1/8, as TCP's smoothed
                    # RTT): a subtraction and a multiplication per message.
                    self.gap += (min(now - self._last_at, self._gap_cap) - self.gap) * GAP_WEIGHT
                self._last_at = now
            self._taken += 1
            self._buffer.append(msg)
            self._owed -= 1
            if (
                self._owed <= 0
                or len(self._buffer) >= self._lingering_batch
                or self._last_at + self.gap >= self._lingering_until
            ):
                self._ready.set()  # outside a linger (its batch 0), or one that now ends
        elif self._ends_request(msg, status):
            self._owed = 0
            self._ready.set()

    def _measure_spacing(self, msg: JsMsg) -> None:
        """At a batch's first message, once ``SPACING_WINDOW_NS`` have passed since the window's
        first, fold the spacing of the messages between them into :attr:`spacing` (weight
        ``SPACING_WEIGHT``): the time between the two first messages' store times, over the
        messages taken between them. Over a window of whole batches and by
        JetStream's clock: a pause of this process's loop (the API's also serves the POSTs)
        delivers what was stored meanwhile in one burst, and traffic that comes in bursts (100
        events every 100 ms) has long pauses between short gaps; measured per message, either
        read as a slow rate at 1,000 events/s and lengthened the linger the latency target needs
        short; and so did a window of one batch to the next when nats-server itself stalled a few
        milliseconds (the stall one message's share of the window, not a tenth of it: at
        1,000/s the posted -> stored p99 rose 1.5 ms). One reading of the ack subject per batch,
        not per message."""
        stored = _stored_ns(msg)
        if not stored or msg.reply.split(".", 5)[4] != "1":
            # A message delivered again (its ack wait over, or nak'd) was stored long before the
            # live feed's newest: no measure from it, nor to it.
            return
        since, taken = self._spaced_from
        if since and stored - since < SPACING_WINDOW_NS:
            return  # the window goes on over the next batches
        self._spaced_from = (stored, self._taken)
        if since and self._taken > taken:
            sample = min((stored - since) / 1e9 / (self._taken - taken), 2 * self.fill_wait_max)
            if not self.spacing or sample < self.spacing / 2:
                # A rate that (at least) doubled over a whole window is followed at once: a
                # shorter spacing only shortens the linger (latency first); a slower rate, which
                # lengthens it, is followed by SPACING_WEIGHT.
                self.spacing = sample
            else:
                self.spacing += (sample - self.spacing) * SPACING_WEIGHT

    def _lateness(self, msg: JsMsg) -> float:
        """How much longer than :attr:`transit` ``msg`` took from JetStream's store to here (s)."""
        stored = _stored_at(msg)
        if stored is None:
            return 0.0
        transit = self._wall() - stored
        self.transit = floor = min(self.transit + TRANSIT_DRIFT, transit)
        late = transit - floor
        return late if late > LATE_S else 0.0

    async def _linger(self, batch: int, fill_wait: float) -> None:
        """A linger, as Kafka's linger.ms, counted from the batch's first message (from when it
        was stored, less its lateness: see the class): a batch goes
        when its oldest message has waited ``fill_wait`` (what arrived during the previous
        batch's transaction has mostly waited that long already), so a steady rate is written in
        batches of at least ``fill_wait`` of traffic, not one transaction each; but it goes at
        once when the next message is not expected before then (the last one's arrival plus
        :attr:`gap`), as each message that comes meanwhile is checked again: a wait that can add
        no message to the batch only delays it."""
        loop = self._loop
        linger = self.linger_for(fill_wait)
        if linger > fill_wait:
            # A slow linger waits for SLOW_FILL_MESSAGES more, not for its length: once they are
            # here it has done its work. A rate that jumped (1,000 POSTs/s after 100/s, the
            # spacing not followed yet) fills it in a few ms instead of holding each batch the
            # whole slow linger: in `make bench` the posted -> stored p95/p99 at 1,000/s were
            # 14-16 / 28-30 ms, the 100/s run's spacing still held for the first of its windows.
            batch = min(batch, 1 + SLOW_FILL_MESSAGES)
        deadline = self._first_at + linger
        self._gap_cap = 2 * fill_wait  # beyond the wait, a gap's length changes no decision
        self._lingering_until, self._lingering_batch = deadline, batch
        try:
            while (
                self._owed > 0
                and len(self._buffer) < batch
                and not self._interrupted
                and self._last_at + self.gap < deadline
                and loop.time() < deadline
            ):
                self._ready.clear()
                timer = loop.call_at(deadline, self._ready.set)
                try:
                    # A message that ends the linger (:meth:`_take`), the deadline, a status,
                    # expiry or interrupt().
                    await self._ready.wait()
                finally:
                    timer.cancel()
        finally:
            self._lingering_until, self._lingering_batch = float("inf"), 0

    def linger_for(self, fill_wait: float) -> float:
        """How long a batch's first message waits for others (s): ``fill_wait`` while messages
        come at least that often; at a slower rate, long enough for ``SLOW_FILL_MESSAGES`` more
        at it, up to :attr:`fill_wait_max`. Below one message per ``fill_wait`` each would
        otherwise be its own batch: at 100 events/s the persister paid a transaction, a commit
        and a wake-up per event (0.4 ms of the API's CPU and 0.4 of Postgres's, against 0.1 and
        0.15 at 1,000/s). The rate at which a latency target is set (1,000/s: posted -> stored
        p99 < 10 ms) keeps ``fill_wait``; slower, each event is stored up to ``fill_wait_max``
        later, long enough for nobody reading a dashboard to see. Slower than one message per
        ``fill_wait_max``, none is expected within it: ``fill_wait`` (and the early end of
        :meth:`_linger`)."""
        if fill_wait < self.spacing < self.fill_wait_max:
            return min(SLOW_FILL_MESSAGES * self.spacing, self.fill_wait_max)
        return fill_wait

    async def fetch(self, batch: int, expires: float, fill_wait: float = 0.0) -> list[JsMsg]:
        """What arrived since the last call, waiting up to ``expires`` for a first message; []
        when the request expired (or was refused: :attr:`status`) or :meth:`interrupt` was called."""
        if not self._buffer:
            self._ready.clear()  # before the send: an interrupt during it must not be lost
            if self._owed <= 0:
                await self._send(batch, expires)
            if not self._buffer and self._owed > 0:
                await self._ready.wait()  # a message, a status, the request's expiry, or interrupt()
        if self._buffer and fill_wait > 0 and batch > 1:
            await self._linger(batch, fill_wait)
        if fill_wait > 0 and self._buffer:
            # A backlog: the open request is still being filled, so the batch is made full.
            while (
                not self._interrupted
                and len(self._buffer) < batch
                and self._owed > 0
                and _pending(self._buffer[-1])
            ):
                self._ready.clear()
                await self._ready.wait()
        msgs, self._buffer = self._buffer, []
        if msgs and self._owed <= 0:
            # Filled: the next batch streams in while this one is handled (at most two in hand).
            await self._send(batch, expires)
        return msgs


def tick_after(t: float, gather: float, offset: float = 0.0) -> float:
    """The first tick ``offset + k * gather`` strictly after ``t``."""
    return (math.floor((t - offset) / gather) + 1) * gather + offset


class GatherPull(_HeldPull):
    """Takes a consumer's messages in batches gathered on a clock shared by the process.

    :class:`StandingPull` hands each message over as it is stored: at a steady rate spread over
    many consumers (the SPC engine's 16 partitions at 1,000 probe events/s), the process wakes,
    decodes and handles about one message at a time, and a linger does not help, since the
    messages still come one by one on the open request. Here:

    - idle, one request for ONE message stays open (the sentinel; it expires after ``expires``,
      as the standing request does), so an idle consumer costs what it costs now;
    - once a message came (or while traffic flows), the puller waits for the next tick, the next
      multiple of ``gather`` seconds on the event loop's clock, the same for every puller of the
      process, and sends a ``no_wait`` pull for the rest of the batch: the server sends whatever
      was stored meanwhile in one burst, then a status. The pulls of every consumer due at a tick
      go in the same loop iteration (one write) and their replies come back together;
    - while a tick's pull brings messages, the next cycle waits for the next tick (no sentinel in
      between); a tick that finds nothing arms the sentinel again; a full one pulls again at once
      (a backlog goes in full batches), and so does a sentinel whose message says more are
      pending (a catch-up does not wait for the tick).

    So a message waits up to ``gather`` (plus its batch's turn) before it is handled. No request
    is open while the puller waits for a tick: messages it holds when the consumer stops are not
    handed over (:meth:`fetch` returns []) and are given back (:meth:`give_back`) or, with
    AckAll, simply not acked. A request lost with the connection is given up after ``expires``
    + 0.5 s.
    """

    def __init__(
        self, nc: NATS, stream: str, durable: str, gather: float, phase: float = 0.0, spread_from: int = 0
    ) -> None:
        super().__init__(nc, stream, durable)
        self._gather = gather
        self._phase_offset = phase * gather
        self._spread_from = spread_from
        self.offset = self._phase_offset if spread_from <= 0 else 0.0
        """Where in the period the next tick falls (s): the phase's, or 0 after a small batch
        (``ConsumerOptions.gather_spread_from``)."""
        self._flowing = False  # the last tick's pull brought messages: the next waits for a tick
        self._backlog = False  # the last tick's pull was filled: pull again at once
        self.sentinels = 0
        """Sentinel requests sent (one per wake-up from idle, and one per expiry)."""
        self.ticks = 0
        """``no_wait`` pulls sent."""

    def next_tick(self) -> float:
        """The next tick on the loop's clock (shared by the process): ``gather * (k + phase)``."""
        return tick_after(self._loop.time(), self._gather, self.offset)

    def _take(self, msg: JsMsg) -> None:
        status = inbox.status_of(msg)
        if not status:
            self._buffer.append(msg)
            self._owed -= 1
            if self._owed == 0:
                self._ready.set()  # the request is filled: no status follows
        elif self._ends_request(msg, status):
            self._owed = 0
            self._ready.set()

    async def _request_for(self, batch: int, expires: float, *, no_wait: bool) -> bool:
        """Send a request and wait until it is filled, ends with a status or is lost: False when
        :meth:`interrupt` ended the wait."""
        self._ready.clear()  # before the send: an interrupt during it must not be lost
        await self._send(batch, expires, no_wait=no_wait)
        while self._owed > 0 and not self._interrupted:
            self._ready.clear()
            await self._ready.wait()
        return not self._interrupted

    async def _until_tick(self) -> bool:
        """Wait for the next tick: False when :meth:`interrupt` ended the wait."""
        fired = False

        def tick() -> None:
            nonlocal fired
            fired = True
            self._ready.set()

        timer = self._loop.call_at(self.next_tick(), tick)
        try:
            while not fired and not self._interrupted:
                self._ready.clear()
                await self._ready.wait()
        finally:
            timer.cancel()
        return not self._interrupted

    async def fetch(self, batch: int, expires: float, fill_wait: float = 0.0) -> list[JsMsg]:
        """The batch gathered at the next tick; [] when the sentinel expired (or a request was
        refused: :attr:`status`), a tick found nothing, or :meth:`interrupt` was called."""
        del fill_wait  # the tick is the linger
        if not self._buffer and not self._flowing and not self._backlog:
            self.sentinels += 1
            if not await self._request_for(1, expires, no_wait=False) or not self._buffer:
                return []
        want = batch - len(self._buffer)
        if want > 0:
            # A first message that says more are pending (its ack subject) is a backlog (a
            # catch-up after a restart or a takeover): pulled at once, not at the tick.
            caught_up = not (self._buffer and _pending(self._buffer[-1]))
            if not self._backlog and caught_up and not await self._until_tick():
                return []
            held = len(self._buffer)
            self.ticks += 1
            if not await self._request_for(want, expires, no_wait=True):
                return []
            got = len(self._buffer) - held
            refused = self.status not in ("", "404", "408")
            self._flowing = got > 0 and not refused
            self._backlog = got >= want and not refused
        msgs, self._buffer = self._buffer, []
        if self._spread_from > 0:
            self.offset = self._phase_offset if len(msgs) >= self._spread_from else 0.0
        return msgs


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
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._filters = list(filter_subjects)
        self._decode = decode
        self._handler = handler
        self._dead_letters = dead_letters
        self._opts = options or ConsumerOptions()
        self._metrics = metrics
        self._log = log.bind(stream=stream, consumer=durable)
        self.processed = 0
        self.dead_lettered = 0
        self.handled_seq = 0
        """The highest stream sequence of a batch this consumer finished (acked or rejected)."""
        self.recreated = 0
        """Times a ``mem_storage`` consumer was found gone and made again."""
        self._failures: dict[int, int] = {}  # stream seq -> counted failures (with ``transient``)
        self._stop = asyncio.Event()
        self._ahead: asyncio.Task[_Batch[T]] | None = None
        # ``ack_all_every``: the AckAll not sent yet (its batch is handled), and when one last went.
        self._ack_due: JsMsg | None = None
        self._acked_at = float("-inf")
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._held = 0  # batches held through the current outage (several with ``concurrent``)
        self._standing: _HeldPull | None = None  # ``run``'s puller, when it holds messages
        self._outage_started = 0.0
        self.outages = 0
        """Outages waited out (or being waited out) by this consumer: transient handler errors."""
        self.conflicts = 0
        """Batches the store declined for a conflict (SQLSTATE 40P01, 40001) and were held and
        retried as in an outage; not outages (one that turns into an outage counts there too)."""
        self.unavailable_tries = 0
        """Handler calls that failed with a transient error (none of them counts toward dead letters)."""

    def consumer_config(self) -> ConsumerConfig:
        """The consumer as :meth:`run` makes it; a ``mem_storage`` consumer made again after a
        nats-server restart lost it resumes after :attr:`handled_seq`."""
        resume = self._opts.mem_storage and self.handled_seq > 0
        return ConsumerConfig(
            durable_name=self._durable,
            name=self._durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if resume else DeliverPolicy.ALL,
            opt_start_seq=self.handled_seq + 1 if resume else None,
            ack_policy=AckPolicy.ALL if self._opts.ack_all else AckPolicy.EXPLICIT,
            ack_wait=self._opts.ack_wait,
            # The server stops redelivering after max_deliver; we dead-letter on the last try ourselves.
            # Transient failures are not counted, so the server must not stop: unlimited (-1).
            max_deliver=-1 if self._opts.transient is not None else self._opts.max_deliver + 1,
            max_ack_pending=self._opts.max_ack_pending,
            filter_subjects=self._filters if len(self._filters) > 1 else None,
            filter_subject=self._filters[0] if len(self._filters) == 1 else None,
            mem_storage=True if self._opts.mem_storage else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished before returning.

        With ``ConsumerOptions.prefetch``, a full batch (a backlog) is handled while the next one
        is pulled, so the client's parsing and decoding of the next batch overlap the handler's
        wait on its store. Each message is still acked only after its own batch's handler
        returned. Fetched-ahead messages are never left to the server's ack wait: they are nak'd
        (redelivered at once) when an outage begins (:meth:`_handle`) and when the consumer stops.
        """
        self._stop = stop
        if self._opts.prefetch and self._opts.ack_all:
            raise ValueError("prefetch needs explicit acks: an AckAll would ack the batch fetched ahead")
        if self._opts.concurrent > 1 and self._opts.ack_all:
            raise ValueError("concurrent batches need explicit acks: an AckAll would ack the other batch")
        opts = self._opts
        if opts.gather > 0 and (opts.prefetch or opts.concurrent > 1 or opts.fill_wait):
            raise ValueError("gather takes one batch a tick: no prefetch, concurrent or fill_wait")
        await self._js.add_consumer(self._stream, config=self.consumer_config())
        # The JetStream context's own connection (nats-py's KeyValue and ObjectStore use it too).
        puller: PullRequests | StandingPull | GatherPull
        waker: asyncio.Task[None] | None = None
        if self._opts.gather > 0 or self._opts.standing:
            standing: StandingPull | GatherPull
            if self._opts.gather > 0:
                standing = GatherPull(
                    self._js._nc,
                    self._stream,
                    self._durable,
                    self._opts.gather,
                    self._opts.gather_phase,
                    self._opts.gather_spread_from,
                )
            else:
                standing = StandingPull(self._js._nc, self._stream, self._durable, self._opts.fill_wait_max)
            puller = self._standing = standing

            async def wake() -> None:
                # A long-open request must not hold a stop (a hand-over of the partition) back.
                await stop.wait()
                standing.interrupt()

            waker = asyncio.create_task(wake())
        else:
            puller = PullRequests(self._js._nc, self._stream, self._durable)
        await puller.start()
        self._log.info("consuming", filters=",".join(self._filters))
        opts = self._opts
        handling: set[asyncio.Task[None]] = set()  # full batches in their handlers (``concurrent``)
        try:
            while not stop.is_set():
                ahead, self._ahead = self._ahead, None
                if ahead is not None:
                    batch = await ahead
                else:
                    msgs = await puller.fetch(opts.batch_size, opts.fetch_timeout, opts.fill_wait)
                    batch = await self._decoded(msgs)
                if batch.msgs:
                    full = len(batch.msgs) >= opts.batch_size
                    if opts.prefetch and full:
                        self._ahead = asyncio.create_task(self._fetch_ahead(puller))
                    if opts.concurrent > 1 and full:
                        handling.add(asyncio.create_task(self._process(batch)))
                        await self._settle(handling, opts.concurrent - 1)
                    else:
                        await self._settle(handling, 0)
                        await self._process(batch)
                elif opts.mem_storage and puller.status == CONSUMER_GONE and self.may_recreate():
                    await self._recreate(puller.status, puller.description)
                elif puller.status not in ("", "404", "408"):
                    # e.g. 409 consumer deleted: no busy loop while the server refuses.
                    self._log.warning("pull request refused", status=puller.status, reason=puller.description)
                    await asyncio.sleep(min(opts.fetch_timeout, 1.0))
            await self._settle(handling, 0)
        except asyncio.CancelledError:
            for task in handling:  # unacked, they are redelivered after ack_wait
                task.cancel()
            raise
        finally:
            if handling:  # run is ending on an error: the other batches still finish (or are nak'd)
                await asyncio.gather(*handling, return_exceptions=True)
            if waker is not None:
                waker.cancel()
            with contextlib.suppress(Exception):
                await self._send_ack_due()  # its batches were handled: their effects are durable
            with contextlib.suppress(Exception):
                await self._give_back_ahead()
            await puller.stop()
            self._standing = None
            if isinstance(puller, _HeldPull) and not opts.ack_all:
                # Unsubscribed: nothing more comes to the open request. What came and was not
                # handled goes back now (another process may take it), not after ack_wait.
                with contextlib.suppress(Exception):
                    for msg in puller.give_back():
                        await msg.nak()

    def may_recreate(self) -> bool:
        """Whether a ``mem_storage`` consumer found gone may be made again by this instance: its
        owner says no (or raises) when another process may own the consumer now."""
        return True

    async def _recreate(self, status: str, description: str) -> None:
        """Make a ``mem_storage`` consumer again (a nats-server restart lost it); on failure (NATS
        still away) the next pull tells again, after a pause (no busy loop)."""
        try:
            await self._js.add_consumer(self._stream, config=self.consumer_config())
        except Exception as exc:
            self._log.warning("consumer gone and not made again yet", status=status, error=repr(exc))
            await asyncio.sleep(min(self._opts.fetch_timeout, 1.0))
            return
        self.recreated += 1
        self._log.warning(
            "consumer was gone (nats-server restarted?): made it again",
            status=status,
            reason=description,
            after_seq=self.handled_seq,
        )

    @staticmethod
    async def _settle(handling: set[asyncio.Task[None]], most: int) -> None:
        """Wait until at most ``most`` batches are still in their handlers; raise what one raised."""
        while len(handling) > most:
            done, _ = await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
            handling.difference_update(done)
            for task in done:
                task.result()

    async def _give_back_ahead(self) -> None:
        """Nak the batch fetched ahead (if any), so the server redelivers it now, not after ack_wait."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        for msg in (await ahead).msgs:  # a no_wait pull, or at most a fetch_timeout long poll
            await msg.nak()

    async def _fetch_ahead(self, puller: PullRequests | StandingPull | GatherPull) -> _Batch[T]:
        """The next batch, pulled and decoded while the handler waits on its store for this one:
        the client's parsing and decoding overlap the store's own work."""
        opts = self._opts
        return await self._decoded(await puller.fetch(opts.batch_size, opts.fetch_timeout, opts.fill_wait))

    async def _decoded(self, msgs: Sequence[JsMsg]) -> _Batch[T]:
        # Not ``_Batch[T](...)``: a subscripted generic's call tries to set ``__orig_class__`` on
        # a slotted instance and swallows the AttributeError (0.8 us a batch, not 0.1).
        batch: _Batch[T] = _Batch(msgs, [], [])
        deliveries, decode = batch.deliveries, self._decode
        for index, msg in enumerate(msgs):
            if index and not index % _DECODE_SLICE:
                await asyncio.sleep(0)  # the handler's replies from its store are not held up
            try:
                event = decode(msg.data)
            except (DecodeError, ValueError) as exc:
                batch.malformed.append((msg, f"malformed message: {exc}", _position(msg)[0]))
                continue
            deliveries.append(Delivery(event, msg.subject, None, None, msg))
        return batch

    async def process(self, msgs: Sequence[JsMsg]) -> None:
        await self._process(await self._decoded(msgs))

    async def _process(self, batch: _Batch[T]) -> None:
        for msg, reason, stream_seq in batch.malformed:
            await self._reject(msg, reason, stream_seq)
            self.handled_seq = max(self.handled_seq, stream_seq)
        deliveries = batch.deliveries
        if not deliveries:
            return
        try:
            rejected = await self._handle(deliveries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("handler failed; will redeliver", batch=len(deliveries))
            if self._opts.ack_all:
                # A later AckAll would ack these too: nak them and stop (the owner recovers).
                for delivery in deliveries:
                    await delivery.msg.nak()
                raise
            await self._retry_or_dead_letter(deliveries, exc)
            return
        if rejected is None:  # stopped during an outage: the batch goes back, untouched
            for delivery in deliveries:
                await delivery.msg.nak()
            return
        if not rejected and not self._failures and not self._opts.ack_all:
            await self._ack_every(deliveries)
            return
        last: Delivery[T] | None = None
        acks: list[JsMsg] = []
        failures = self._failures
        for index, delivery in enumerate(deliveries):
            if failures:
                failures.pop(delivery.stream_seq, None)
            if index in rejected:
                await self._reject(delivery.msg, rejected[index], delivery.stream_seq)
            else:
                if not self._opts.ack_all:
                    acks.append(delivery.msg)
                elif last is None or delivery.stream_seq > last.stream_seq:
                    last = delivery
                self.processed += 1
            if delivery.stream_seq > self.handled_seq:
                self.handled_seq = delivery.stream_seq
        if acks:
            # Still one +ACK per message (the durable consumer may be shared), in one write.
            await inbox.ack_many(self._js._nc, acks)
        if last is not None:
            await self._ack_all(last.msg)  # AckAll: every message of the batch up to it

    async def _ack_every(self, deliveries: Sequence[Delivery[T]]) -> None:
        """Ack a batch none of whose messages was rejected or failed before (nearly every batch of
        explicit acks): the loop below in one pass of C calls, the stream sequences read alone."""
        msgs = [delivery.msg for delivery in deliveries]
        self.processed += len(msgs)
        self.handled_seq = max(self.handled_seq, max(map(_stream_seq, msgs)))
        # Still one +ACK per message (the durable consumer may be shared), in one write.
        await inbox.ack_many(self._js._nc, msgs)

    async def _ack_all(self, msg: JsMsg) -> None:
        every, gather = self._opts.ack_all_every, self._opts.gather
        loop = asyncio.get_running_loop()
        if every <= 0 or (gather <= 0 and loop.time() - self._acked_at >= every):
            self._ack_due = msg
            await self._send_ack_due()
            return
        # At a trickle every event is a batch: one AckAll per ``every`` for all of them, not one
        # each (a write for this process and an ack for the server per event).
        self._ack_due = msg
        if self._ack_timer is None:
            when = self._acked_at + every
            if gather > 0:
                # On a tick (:class:`GatherPull`), with the pulls of the process's other
                # consumers: one write and one wake-up for all of them, not one per consumer.
                # The last AckAll went at a tick (plus the loop's lag), so the tick at or before
                # ``when`` is ``every`` after it: not later than without the ticks.
                now = loop.time()
                puller = self._standing
                offset = puller.offset if isinstance(puller, GatherPull) else self._opts.gather_phase * gather
                # The tick at or before ``when`` (never acked yet: ``when`` is -inf).
                tick = tick_after(when, gather, offset) - gather if when > now else now
                when = tick if tick > now else tick_after(now, gather, offset)
            self._ack_timer = loop.call_at(when, self._ack_soon)

    def _ack_soon(self) -> None:
        self._ack_timer = None
        task = asyncio.ensure_future(self._send_ack_due())
        self._ack_tasks.add(task)
        task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Task[None]) -> None:
        self._ack_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # NATS away: the server redelivers after ack_wait; the consumer's owner replays anyway.
            self._log.warning("deferred AckAll failed", error=repr(task.exception()))

    async def _send_ack_due(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        msg, self._ack_due = self._ack_due, None
        if msg is not None:
            self._acked_at = asyncio.get_running_loop().time()
            await msg.ack()

    async def _handle(self, deliveries: Sequence[Delivery[T]]) -> Mapping[int, str] | None:
        """The handler's rejections; transient errors are waited out here (None: stopped meanwhile).

        With ``concurrent`` batches, an outage holds each of them; it is one outage all the same
        (one line when it starts, the summaries, one line when it ends)."""
        transient = self._opts.transient
        if transient is None:
            return await self._handler(deliveries) or {}
        loop = asyncio.get_running_loop()
        last_summary = last_progress = 0.0
        tries = 0
        opened = False  # this batch's failure began the outage: it logs the summaries
        counted = False  # this hold counted in ``outages`` (a conflict alone does not)
        conflict = False  # the last failure was a conflict, not the store away
        try:
            while True:
                try:
                    rejected = await self._handler(deliveries) or {}
                except Exception as exc:
                    if not transient(exc):
                        raise
                    error = f"{type(exc).__name__}: {exc}"[:200]
                    # A deadlock or serialization failure (SQLSTATE 40P01, 40001) is the store
                    # declining this transaction, not an outage: counted and worded as what it
                    # is, so an operator is not sent looking for a Postgres that is up.
                    conflict = getattr(exc, "sqlstate", None) in _CONFLICT_SQLSTATES
                    now = loop.time()
                    tries += 1
                    self.unavailable_tries += 1
                    if tries == 1:
                        last_summary = last_progress = now
                        self._held += 1
                        opened = self._held == 1
                        # Held through the outage it would outlive ack_wait. A failed nak (NATS
                        # away too) is no handler failure: the server redelivers after ack_wait.
                        with contextlib.suppress(Exception):
                            await self._give_back_ahead()
                        if opened:
                            self._outage_started = now
                            if conflict:
                                self.conflicts += 1
                            self._log.warning(
                                f"store could not take the batch now ({type(exc).__name__});"
                                " holding it and retrying"
                                if conflict
                                else "store unavailable; holding the batch",
                                batch=len(deliveries),
                                error_class=type(exc).__name__,
                                error=error,
                            )
                    elif opened and now - last_summary >= self._opts.outage_summary_s:
                        last_summary = now
                        self._log.warning(
                            "store still declining the batch (conflicting transactions); retrying"
                            if conflict
                            else "store still unavailable",
                            outage_s=round(now - self._outage_started),
                            tries=tries,
                            error=error,
                        )
                    if opened and not conflict and not counted:
                        counted = True
                        self.outages += 1
                    if now - last_progress >= self._opts.ack_wait / 3:
                        # Not redelivered while held (to this or another replica): the wait is ours.
                        last_progress = now
                        await self._in_progress(deliveries)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self._delay(tries))
                    if self._stop.is_set():
                        self._log.info(
                            "stopping during an outage; the batch will be redelivered", tries=tries
                        )
                        return None
                    continue
                if tries and self._held == 1:
                    self._log.info(
                        "store took the batch; resuming" if conflict else "store available again; resuming",
                        outage_s=round(loop.time() - self._outage_started, 1),
                        tries=tries,
                    )
                return rejected
        finally:
            if tries:
                self._held -= 1

    async def _in_progress(self, deliveries: Sequence[Delivery[T]]) -> None:
        msgs = [delivery.msg for delivery in deliveries]
        if self._standing is not None and not self._opts.ack_all:
            # Delivered to the open request while the batch is held: kept in progress with it.
            msgs += self._standing.taken_meanwhile()
        for msg in msgs:
            try:
                await msg.in_progress()
            except Exception:  # NATS away too: the server redelivers after ack_wait, stored once
                return

    def _delay(self, num_delivered: int) -> float:
        backoff = self._opts.backoff
        return backoff[min(max(num_delivered, 1) - 1, len(backoff) - 1)]

    def _count_failure(self, delivery: Delivery[T]) -> int:
        if self._opts.transient is None:
            return delivery.num_delivered
        failures = self._failures.pop(delivery.stream_seq, 0) + 1
        self._failures[delivery.stream_seq] = failures
        if len(self._failures) > self._opts.max_ack_pending:
            del self._failures[next(iter(self._failures))]  # the oldest: it moved to another replica
        return failures

    async def _retry_or_dead_letter(self, deliveries: Sequence[Delivery[T]], exc: Exception) -> None:
        for delivery in deliveries:
            failures = self._count_failure(delivery)
            if failures >= self._opts.max_deliver:
                self._failures.pop(delivery.stream_seq, None)
                reason = f"handler failed {failures} times, last error: {exc!r}"
                await self._reject(delivery.msg, reason, delivery.stream_seq)
            else:
                await delivery.msg.nak(delay=self._delay(delivery.num_delivered))

    async def _reject(self, msg: JsMsg, reason: str, stream_seq: int) -> None:
        # The dead letter is published (and acked by JetStream) before the original is dropped.
        await self._dead_letters.send(
            subject=msg.subject,
            payload=msg.data,
            reason=reason,
            stream_seq=stream_seq,
            msg_id=(msg.headers or {}).get("Nats-Msg-Id"),
        )
        await msg.term()
        self.dead_lettered += 1
        if self._metrics is not None:
            self._metrics.dead_letters.labels(self._durable).inc()
        self._log.warning("dead-lettered", subject=msg.subject, seq=stream_seq, reason=reason[:200])
