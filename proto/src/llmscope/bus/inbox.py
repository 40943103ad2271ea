"""A lean receive path for pull inboxes, and acks sent as one write per batch.

nats-py turns every message it parses into a ``Msg`` dataclass with a parsed header dict, puts
it on the subscription's queue and hands it to the callback from the subscription's task: about
a third of the persister's client CPU per event when it drains a backlog (py-spy,
``bench/ingest_bench.py`` (e)). A pull inbox needs none of that: its messages are JetStream
deliveries whose position is in the reply subject, and statuses that end a request. Here such a
subscription's messages are handed, as the parser reads them, to a callback as :class:`InboxMsg`
(subject and reply decoded, the headers kept as bytes and parsed only when read: a dead letter's
``Nats-Msg-Id``, a status's description). :func:`ack_many` sends a batch's acks (one ``+ACK`` per
message, as ``Msg.ack`` sends them) in one write.

Both hook into nats-py's client (pinned to 2.16 by the lock file): the parser calls
``client._process_msg(sid, subject, reply, payload, headers)`` for each message, and a publish
is ``client._send_command`` then ``client._flush_pending``. :func:`route` checks for those
attributes and returns False when they are missing (another nats-py), and the subscription then
goes through nats-py's ordinary callback with ``Msg`` objects, which this module's users accept
too (``tests/bus/test_inbox.py`` runs both paths against a real server).
"""

from __future__ import annotations

import json
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    MsgAlreadyAckdError,
    NotJSMessageError,
    OutboundBufferLimitError,
    ProtocolError,
)
from nats.protocol.parser import AWAITING_CONTROL_LINE as _AWAITING_CONTROL_LINE
from nats.protocol.parser import MAX_CONTROL_LINE_SIZE as _MAX_CONTROL_LINE_SIZE
from nats.protocol.parser import Parser

from llmscope.config.logs import get_logger

_HDR_LINE = b"NATS/1.0"
_original_parse = Parser.parse

log = get_logger("llmscope.bus.inbox")


class JsMsg(Protocol):
    """What the consumer adapter and its handlers read of a delivery: nats-py's ``Msg`` or
    :class:`InboxMsg`."""

    @property
    def subject(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str] | None: ...
    @property
    def metadata(self) -> Msg.Metadata: ...

    async def ack(self) -> None: ...
    async def nak(self, delay: int | float | None = None) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """A NATS header block as nats-py 2.16 reads it: an inline status (``NATS/1.0 404 No
    Messages``) as ``Status`` and ``Description``, then ``Name: Value`` lines."""
    if not raw:
        return None
    first, _, rest = raw.partition(b"\r\n")
    out: dict[str, str] = {}
    inline = first[len(_HDR_LINE) :].strip()
    if inline:
        status, _, description = inline.partition(b" ")
        if status.isdigit():
            out["Status"] = status.decode()
        if description:
            out["Description"] = description.decode("utf-8", "replace")
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if any(c.isspace() for c in key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out or None


def status_of(msg: JsMsg) -> str:
    """The inline status of a message ("404", "408", "100"...), "" for a delivery."""
    if isinstance(msg, InboxMsg):
        return msg.status
    return (msg.headers or {}).get("Status", "") if not msg.data else ""


class InboxMsg:
    """A message of a routed subscription: nats-py ``Msg``'s fields and JetStream acks, without
    its dataclass, header dict or queue."""

    __slots__ = (
        "_ackd",
        "_headers",
        "_metadata",
        "_nc",
        "_raw_headers",
        "data",
        "reply",
        "status",
        "subject",
    )

    def __init__(self, nc: NATS, subject: str, reply: str, data: bytes, raw_headers: bytes | None) -> None:
        self._nc = nc
        self.subject = subject
        self.reply = reply
        self.data = data
        self._raw_headers = raw_headers
        self._headers: dict[str, str] | bool | None = False  # False: not parsed yet
        self._metadata: Msg.Metadata | None = None
        self._ackd = False
        # An inline status sits right after "NATS/1.0 " in a message without data.
        self.status = (
            raw_headers[9:12].decode()
            if not data and raw_headers and raw_headers[8:9] == b" " and raw_headers[9:12].isdigit()
            else ""
        )

    @property
    def headers(self) -> dict[str, str] | None:
        if self._headers is False:
            self._headers = parse_headers(self._raw_headers)
        return self._headers  # type: ignore[return-value]

    @property
    def metadata(self) -> Msg.Metadata:
        if self._metadata is None:
            self._metadata = Msg.Metadata._from_reply(self.reply)
        return self._metadata

    def _check(self) -> None:
        if not self.reply:
            raise NotJSMessageError
        if self._ackd:
            raise MsgAlreadyAckdError(self)

    async def ack(self) -> None:
        self._check()
        await self._nc.publish(self.reply)
        self._ackd = True

    async def nak(self, delay: int | float | None = None) -> None:
        self._check()
        payload = b"-NAK"
        if delay:
            payload += b" " + json.dumps({"delay": int(delay * 10**9)}).encode()
        await self._nc.publish(self.reply, payload)
        self._ackd = True

    async def term(self) -> None:
        self._check()
        await self._nc.publish(self.reply, b"+TERM")
        self._ackd = True

    async def in_progress(self) -> None:
        if not self.reply:
            raise NotJSMessageError
        await self._nc.publish(self.reply, b"+WPI")

    def __repr__(self) -> str:
        return f"InboxMsg(subject={self.subject!r}, reply={self.reply!r}, data={len(self.data)} bytes)"


InboxCallback = Callable[[InboxMsg], Awaitable[None] | None]
"""A plain function (the pullers: no coroutine made per message) or a coroutine function."""

_ROUTES = "_llmscope_routes"


def _hookable(nc: NATS) -> bool:
    return all(hasattr(nc, a) for a in ("_process_msg", "_subs", "_send_command", "_flush_pending", "stats"))


_MSG = b"MSG "
_HMSG = b"HMSG "


async def _parse(parser: Any, data: bytes = b"") -> None:
    """nats-py 2.16's ``Parser.parse`` for the messages a client reads, without its regular
    expressions: a control line found with ``bytearray.find`` and split, the payload sliced as
    nats-py slices it, then a routed inbox's callback (:func:`route`), or else the client's
    ``_process_msg`` as nats-py calls it. Everything else
    (PING, PONG, INFO, -ERR, +OK, and a message nats-py's parser is already in the middle of) is
    left to nats-py's own ``parse``. A drain of 2,000-message batches spent ~4 µs per message in
    nats-py's parser, a fifth of the persister's client CPU per event; this takes under 1."""
    if parser.state != _AWAITING_CONTROL_LINE:
        await _original_parse(parser, data)
        return
    buf: bytearray = parser.buf
    buf.extend(data)
    size = len(buf)
    pos = 0
    nc = parser.nc
    process = nc._process_msg
    # A routed inbox's messages go straight to its callback (:func:`_deliver`), not through the
    # client's ``_process_msg`` (a coroutine made and awaited per message).
    routes: dict[int, InboxCallback] = getattr(nc, _ROUTES, None) or {}
    other = False
    try:
        while pos < size:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                other = size - pos > _MAX_CONTROL_LINE_SIZE  # nats-py raises on it
                break
            if buf.startswith(_HMSG, pos):
                args = bytes(buf[pos + 5 : end]).split()
                headed = True
            elif buf.startswith(_MSG, pos):
                args = bytes(buf[pos + 4 : end]).split()
                headed = False
            else:
                other = True
                break
            try:
                if headed:
                    if len(args) == 5:
                        subject, sid, reply, header_size, total = args
                    else:
                        (subject, sid, header_size, total), reply = args, b""
                    hsize = int(header_size)
                else:
                    if len(args) == 4:
                        subject, sid, reply, total = args
                    else:
                        (subject, sid, total), reply = args, b""
                    hsize = 0
                sid_n, needed = int(sid), int(total)
            except ValueError as exc:
                raise ProtocolError("nats: malformed MSG") from exc
            start = end + 2
            if size < start + needed + 2:
                break  # the payload is not all here yet
            headers = bytes(buf[start : start + hsize]) if hsize > 0 else None
            payload = bytes(buf[start + hsize : start + needed])
            pos = start + needed + 2
            callback = routes.get(sid_n)
            if callback is None:
                await process(sid_n, subject, reply, payload, headers)
            else:
                pending = _deliver(nc, sid_n, callback, subject, reply, payload, headers)
                if pending is True:
                    continue  # handled without a wait: nothing can have reset the parser
                await _finish(sid_n, pending)
            if parser.buf is not buf:  # reset meanwhile (a reconnect): the rest is stale
                return
    finally:
        if parser.buf is buf:
            del buf[:pos]
    if other:
        await _original_parse(parser, b"")


def _deliver(
    nc: NATS,
    sid: int,
    callback: InboxCallback,
    subject: bytes,
    reply: bytes,
    data: bytes,
    headers: bytes | None,
) -> Awaitable[None] | Literal[True]:
    """Hand a message to its route's callback as :class:`InboxMsg`: True when done, else what the
    callback left to await (a coroutine function's), for :func:`_finish`."""
    stats = nc.stats
    stats["in_msgs"] += 1
    stats["in_bytes"] += len(data)
    try:
        pending = callback(InboxMsg(nc, subject.decode(), reply.decode(), data, headers))
    except Exception:  # the client's read loop must go on, as with a subscription's task
        log.exception("inbox callback failed", sid=sid)
        return True
    return True if pending is None else pending


async def _finish(sid: int, pending: Awaitable[None]) -> None:
    try:
        await pending
    except Exception:
        log.exception("inbox callback failed", sid=sid)


def fast_parser(nc: NATS) -> bool:
    """Parse ``nc``'s messages with :func:`_parse` (its state kept: it may be mid-stream). False
    when its parser is not nats-py 2.16's."""
    parser = getattr(nc, "_ps", None)
    if type(parser) is not Parser or not all(hasattr(parser, a) for a in ("buf", "state", "nc")):
        return False
    parser.parse = types.MethodType(_parse, parser)  # type: ignore[method-assign]
    return True


def route(nc: NATS, sid: int, cb: InboxCallback) -> bool:
    """Hand subscription ``sid``'s messages to ``cb`` as the parser reads them (in the client's
    read loop: ``cb`` must not block). False when this nats-py cannot be hooked."""
    if not _hookable(nc):
        return False
    routes: dict[int, InboxCallback] | None = getattr(nc, _ROUTES, None)
    if routes is None:
        routes = {}
        original = nc._process_msg

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any) -> None:
            callback = routes.get(sid)
            if callback is None:
                await original(sid, subject, reply, data, headers)
                return
            pending = _deliver(nc, sid, callback, subject, reply, data, headers)
            if pending is not True:
                await _finish(sid, pending)

        setattr(nc, _ROUTES, routes)
        nc._process_msg = process_msg  # type: ignore[method-assign]
        fast_parser(nc)
    routes[sid] = cb
    return True


def unroute(nc: NATS, sid: int) -> None:
    routes: dict[int, InboxCallback] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        routes.pop(sid, None)


async def ack_many(nc: NATS, msgs: Sequence[JsMsg]) -> None:
    """Ack each message (an empty publish to its reply subject, as ``Msg.ack``) in one write.

    Raises as ``Client.publish`` does when the connection is closed, draining or, while it
    reconnects, its pending buffer is full; nothing is marked acked then."""
    if not msgs:
        return
    if not _hookable(nc):
        for msg in msgs:
            await msg.ack()
        return
    replies = []
    for msg in msgs:
        if not msg.reply:
            raise NotJSMessageError
        if getattr(msg, "_ackd", False):  # both InboxMsg and nats-py's Msg keep it there
            raise MsgAlreadyAckdError(msg)
        replies.append(msg.reply)
    cmd = ("PUB " + " 0\r\n\r\nPUB ".join(replies) + " 0\r\n\r\n").encode()
    if nc.is_closed:
        raise ConnectionClosedError
    if nc.is_draining_pubs:
        raise ConnectionDrainingError
    limit = nc._max_pending_size
    if not nc.is_connected and (limit <= 0 or len(cmd) + nc._pending_data_size > limit):
        raise OutboundBufferLimitError
    nc.stats["out_msgs"] += len(replies)
    await nc._send_command(cmd)
    if nc._flush_queue is not None and nc._flush_queue.empty():  # as Client.publish does
        await nc._flush_pending()
    for msg in msgs:
        msg._ackd = True  # type: ignore[attr-defined]
