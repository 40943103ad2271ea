"""The lean pull-inbox path against a real nats-server: what nats-py would have handed over,
without its Msg objects; acks of a batch in one write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, MsgAlreadyAckdError
from nats.js import JetStreamContext

from llmscope.bus import inbox
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.inbox import InboxMsg, ack_many, parse_headers, route, status_of, unroute
from llmscope.bus.publisher import Publisher
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from tests.alerter.harness import eventually
from tests.proto.test_codec import telemetry

SUBJECT = subjects.telemetry("ollama", "llama3.1:8b")

HEADER_BLOCKS = [
    b"NATS/1.0\r\nNats-Msg-Id: 0123abcd\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 10\r\nNats-Pending-Bytes: 0\r\n\r\n",
    b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 12\r\nNats-Last-Stream: 40\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0\r\nA: 1\r\nB:2\r\nBad Name: x\r\nno colon\r\nC: caf\xc3\xa9\r\n\r\n",
]


@pytest.mark.parametrize("raw", HEADER_BLOCKS)
async def test_headers_parse_as_nats_py_parses_them(raw: bytes) -> None:
    nc = NATS()  # never connected: only its header parser is used
    assert parse_headers(raw) == await nc._process_headers(raw)


@pytest.mark.parametrize("raw", HEADER_BLOCKS)
async def test_a_status_is_read_as_nats_py_reads_it(raw: bytes) -> None:
    nc = NATS()
    nats_py = Msg(_client=nc, subject="s", reply="", data=b"", headers=await nc._process_headers(raw))
    ours = InboxMsg(nc, "s", "", b"", raw)
    assert status_of(ours) == status_of(nats_py) == (JetStreamContext.is_status_msg(nats_py) or "")
    assert ours.headers == nats_py.headers
    # A delivery (data) never counts as a status.
    assert status_of(InboxMsg(nc, "s", "r", b"{}", raw)) == ""


async def test_a_routed_subscription_gets_what_nats_py_would_hand_over(nc: NATS) -> None:
    routed: list[InboxMsg] = []
    plain: list[Msg] = []

    async def on_routed(msg: InboxMsg) -> None:
        routed.append(msg)

    async def on_plain(msg: Msg) -> None:
        plain.append(msg)

    inbox_subject = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox_subject}.*", cb=on_plain)
    assert route(nc, sub._id, on_routed)
    other = await nc.subscribe("other.*", cb=on_plain)  # not routed: nats-py's own path
    in_msgs = nc.stats["in_msgs"]
    await nc.publish(f"{inbox_subject}.1", b"payload", reply="the.reply", headers={"Nats-Msg-Id": "abc"})
    await nc.publish("other.1", b"x")
    await eventually(lambda: len(routed) == 1 and len(plain) == 1, within=5, what="both delivered")
    msg = routed[0]
    assert (msg.subject, msg.reply, msg.data) == (f"{inbox_subject}.1", "the.reply", b"payload")
    assert msg.headers == {"Nats-Msg-Id": "abc"}
    assert msg.status == ""
    assert plain[0].subject == "other.1"
    assert nc.stats["in_msgs"] == in_msgs + 2
    unroute(nc, sub._id)
    await nc.publish(f"{inbox_subject}.2", b"again")
    await eventually(lambda: len(plain) == 2, within=5, what="unrouted: nats-py's callback again")
    assert isinstance(plain[1], Msg)
    assert plain[1].data == b"again"
    await sub.unsubscribe()
    await other.unsubscribe()


async def test_a_failing_callback_does_not_stop_the_client(nc: NATS) -> None:
    got: list[bytes] = []

    async def flaky(msg: InboxMsg) -> None:
        if msg.data == b"boom":
            raise RuntimeError("a bug")
        got.append(msg.data)

    sub = await nc.subscribe("flaky.*", cb=None)
    route(nc, sub._id, flaky)
    await nc.publish("flaky.1", b"boom")
    await nc.publish("flaky.2", b"fine")
    await eventually(lambda: got == [b"fine"], within=5, what="the next message")
    unroute(nc, sub._id)


async def _pull(js: JetStreamContext, n: int) -> list[Msg]:
    sub = await js.pull_subscribe(subjects.TELEMETRY_ALL, durable="acks", stream=subjects.STREAM_TELEMETRY)
    return await sub.fetch(n, timeout=5)


async def test_ack_many_acks_each_message_in_one_write(js: JetStreamContext, nc: NATS) -> None:
    await Publisher(js).publish_many([(SUBJECT, telemetry()) for _ in range(5)])
    msgs = await _pull(js, 5)
    out_msgs = nc.stats["out_msgs"]
    await ack_many(nc, msgs[:4])
    assert nc.stats["out_msgs"] == out_msgs + 4

    async def pending() -> int:
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "acks")
        return info.num_ack_pending or 0

    async def one_pending() -> bool:
        return await pending() == 1

    await eventually(one_pending, within=5, what="four acked, one left")
    with pytest.raises(MsgAlreadyAckdError):
        await ack_many(nc, msgs[3:])  # one of them was acked already: nothing is sent
    assert await pending() == 1
    await nc.close()
    with pytest.raises(ConnectionClosedError):
        await ack_many(nc, msgs[4:])


def make_consumer(
    js: JetStreamContext, handler: object, options: ConsumerOptions
) -> DurableConsumer[TelemetryEvent]:
    return DurableConsumer(
        js=js,
        stream=subjects.STREAM_TELEMETRY,
        durable="test",
        filter_subjects=[subjects.TELEMETRY_ALL],
        decode=lambda b: codec.decode_as(b, TelemetryEvent),
        handler=handler,  # type: ignore[arg-type]
        dead_letters=DeadLetters(Publisher(js), "test"),
        options=options,
    )


@pytest.mark.parametrize("hooked", [True, False])
async def test_the_consumer_works_with_and_without_the_hook(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, hooked: bool
) -> None:
    """Where nats-py cannot be hooked (another version), the pullers take nats-py's Msg objects."""
    if not hooked:
        monkeypatch.setattr(inbox, "_hookable", lambda nc: False)
    events = [telemetry() for _ in range(25)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    await js.publish(SUBJECT, b"not json")
    seen: list[str] = []
    kinds: set[type] = set()
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)
        kinds.update(type(d.msg) for d in batch)
        if len(seen) == len(events):
            done.set()

    stop = asyncio.Event()
    consumer = make_consumer(js, handler, ConsumerOptions(batch_size=10, fetch_timeout=0.2, prefetch=True))
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert seen == [e.id for e in events]
    assert kinds == ({InboxMsg} if hooked else {Msg})
    assert consumer.dead_lettered == 1

    async def all_acked() -> bool:
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
        return (info.num_ack_pending or 0) == 0 and (info.num_pending or 0) == 0

    await eventually(all_acked, within=10, what="every message acked or terminated")


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TELEMETRY.persister.3.1234567.99.1733470000123456789.42",
        "$JS.ACK.hub.ACCHASH.TELEMETRY.persister.3.1234567.99.1733470000123456789.42.rand",
    ],
)
def test_metadata_is_read_as_nats_py_reads_it(reply: str) -> None:
    """The SPC engine reads a delivery's stored time and pending count from it (ack subjects
    with a domain go through ``metadata``)."""
    ours = InboxMsg(NATS(), "s", reply, b"{}", None).metadata
    assert ours == Msg(_client=NATS(), subject="s", reply=reply).metadata
    assert (ours.sequence.stream, ours.num_delivered, ours.num_pending) == (1234567, 3, 42)


class _Recorder:
    """What a parser hands the client: each message, PING, PONG, INFO and -ERR, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: object
    ) -> None:
        self.seen.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_info(self, info: object) -> None:
        self.seen.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.seen.append(("err", err))


def _hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
    line = b" ".join(p for p in (b"HMSG", subject, b"%d" % sid, reply, sizes) if p)
    return line + b"\r\n" + headers + payload + b"\r\n"


WIRE = b"".join(
    [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        b"MSG llmscope.a 1 5\r\nhello\r\n",
        b"MSG llmscope.b 22 _INBOX.abc.7 0\r\n\r\n",
        _hmsg(b"_INBOX.x.1", 3, b"$JS.ACK.T.c.1.2.3.1733470000123456789.0", HEADER_BLOCKS[0], b'{"a":1}'),
        _hmsg(b"_INBOX.x.2", 3, b"", HEADER_BLOCKS[1], b""),
        b"PING\r\n",
        b"MSG  spaced\t 4   _INBOX.r   3\r\nabc\r\n",
        b"PONG\r\n",
        b"+OK\r\n",
        _hmsg(b"s", 5, b"r", HEADER_BLOCKS[2], b"\r\n\r\n"),
        b"-ERR 'Stale Connection'\r\n",
        b"MSG tail 6 2\r\n\r\n\r\n",
    ]
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, len(WIRE)])
async def test_the_fast_parser_hands_over_what_nats_pys_parser_does(chunk: int) -> None:
    """Any cut of the stream into reads: the same messages (subject, sid, reply, payload,
    headers), PINGs, PONGs, INFO and -ERR, in the same order, as nats-py's own parser."""
    from nats.protocol.parser import Parser

    ours, theirs = _Recorder(), _Recorder()
    fast, plain = Parser(ours), Parser(theirs)
    fast.parse = inbox._parse.__get__(fast)  # type: ignore[method-assign]
    for start in range(0, len(WIRE), chunk):
        await fast.parse(WIRE[start : start + chunk])
        await plain.parse(WIRE[start : start + chunk])
    assert ours.seen == theirs.seen
    assert len([s for s in ours.seen if s[0] == "msg"]) == 7
    assert not fast.buf


async def test_the_fast_parser_refuses_a_malformed_message_as_nats_py_does() -> None:
    from nats.errors import ProtocolError
    from nats.protocol.parser import Parser

    fast = Parser(_Recorder())
    fast.parse = inbox._parse.__get__(fast)  # type: ignore[method-assign]
    with pytest.raises(ProtocolError):
        await fast.parse(b"MSG subject notasid 5\r\nhello\r\n")
