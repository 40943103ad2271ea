"""NATS messages per probe event, by kind and by connection, for ``stack_bench.py --nats-breakdown``.

Not run alone. Two views of the same phase:

- nats-server's own counters from its monitoring endpoint (``/varz`` in_msgs and out_msgs, and
  ``/connz?subs=1`` per connection, named by the client: ``llmscope-api``, the engine's, the
  probers'...), read before and after;
- a sniffer: one more connection subscribed to ``>``, which gets a copy of every message the
  server routes in the account (JetStream deliveries too: a delivery is routed on its pull
  request's reply subject and shows the stored subject, with a ``$JS.ACK`` reply), and sorts each
  into a kind: telemetry publishes, their ``+OK`` publish acks, pull requests
  (``$JS.API.CONSUMER.MSG.NEXT``) and the statuses that end them (408 expired, 404/409), deliveries
  by stream and consumer, acks, KV puts and their acks, KV watch deliveries, heartbeats, flow
  control, live notices, other JetStream API requests and their replies. A reply is told by the
  reply subject of the message it answers, seen before it.

The sniffer's copies double what the server sends out, so nats-server's CPU in a breakdown run is
not a figure to quote: measure CPU in a run without ``--nats-breakdown``. The sniffer's own
deliveries are taken off the server's out_msgs; the benchmark's own requests (``caught_up``, on
inboxes ``_INBOX_BENCH``) are counted apart.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

BENCH_INBOX = "_INBOX_BENCH"
"""Inbox prefix of the benchmark's own connections (``caught_up``): their traffic is counted apart."""
SNIFFER = "bench-sniffer"

_DIGITS = re.compile(r"\d+")
_RANDOM = re.compile(r"[A-Za-z0-9]{8,}")


def _group(name: str) -> str:
    """A consumer's name with its numbers folded (the engine's 16 partitions are one kind)."""
    if _RANDOM.fullmatch(name) and not name.islower():
        return "<ephemeral>"  # ordered consumers (KV watches) get random names
    return _DIGITS.sub("#", name)


def _ack_parts(subject: str) -> tuple[str, str]:
    tokens = subject.split(".")
    if len(tokens) >= 9 and len(tokens) != 11:
        return tokens[2], _group(tokens[3])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>...
        return tokens[4], _group(tokens[5])
    return "?", "?"


def classify_request(subject: str) -> str:
    """The kind of a message that is not a reply."""
    if subject.startswith("$JS.API."):
        rest = subject[len("$JS.API.") :]
        if rest.startswith("CONSUMER.MSG.NEXT."):
            tokens = rest.split(".")
            stream = tokens[3] if len(tokens) > 3 else "?"
            consumer = _group(tokens[4]) if len(tokens) > 4 else "?"
            return f"pull request {stream}/{consumer}"
        if rest.startswith("DIRECT.GET."):
            return f"JS API DIRECT.GET {rest.split('.')[2]}"
        op = ".".join(t for t in rest.split(".")[:2] if t.isupper())
        return f"JS API {op}"
    if subject.startswith("$JS.ACK."):
        stream, consumer = _ack_parts(subject)
        return f"ack {stream}/{consumer}"
    if subject.startswith("$JS.EVENT."):
        # nats-server sends advisories only where someone listens: here, the sniffer.
        return "advisory (sent because the sniffer listens)"
    if subject.startswith("$JS.FC."):
        return "flow control response"
    if subject.startswith("$KV."):
        return f"KV put {subject.split('.')[1]}"
    if subject.startswith("llmscope."):
        tokens = subject.split(".")
        kind = tokens[1] if len(tokens) > 1 else "?"
        if kind == "live":
            return "live notice"
        if kind == "control":
            return "control request " + ".".join(tokens[3:5])
        return f"publish {kind}"
    if subject.startswith("_INBOX"):
        return "inbox message (unmatched reply)"
    return "other " + ".".join(subject.split(".")[:3])


@dataclass
class Sniffer:
    """Counts every message the server routes in the account, by kind (see the module doc)."""

    counts: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    """The benchmark's own traffic (``caught_up`` and its replies)."""
    _replies: dict[str, str] = field(default_factory=dict)
    _nc: NATS | None = None
    counting: bool = False

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url, name=SNIFFER, inbox_prefix="_INBOX_SNIFFER")
        await self._nc.subscribe(">", cb=self._on, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
        await self._nc.flush()

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    def reset(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        self.own.clear()
        return counts

    def _on_sync(self, subject: str, reply: str, headers: dict[str, str] | None) -> None:
        status = (headers or {}).get("Status", "")
        if reply.startswith(BENCH_INBOX) or subject.startswith(BENCH_INBOX):
            self.own[classify_request(subject)] += 1
            return
        if reply.startswith("$JS.ACK."):
            stream, consumer = _ack_parts(reply)
            what = "watch delivery" if stream.startswith("KV_") else "delivery"
            self.counts[f"{what} {stream}/{consumer}"] += 1
            return
        if reply.startswith("$JS.FC."):
            self.counts["flow control request"] += 1
            return
        if status == "100":
            self.counts["idle heartbeat"] += 1
            return
        if subject in self._replies:
            asked = self._replies[subject]
            if asked.startswith("pull request"):
                label = f"status {status or '?'} ({asked})"
            else:
                self._replies.pop(subject)
                label = f"reply to {asked}" if not status else f"status {status} to {asked}"
            self.counts[label] += 1
            return
        kind = classify_request(subject)
        if reply:
            if len(self._replies) > 1_000_000:
                self._replies.clear()
            self._replies[reply] = kind
        if subject.startswith("_INBOX") and status:
            kind = f"status {status} on an unmatched inbox"
        self.counts[kind] += 1

    async def _on(self, msg: Msg) -> None:
        if self.counting:
            self._on_sync(msg.subject, msg.reply, msg.headers)
        elif msg.reply and not msg.reply.startswith("$JS."):
            # A request sent before counting began (a pull request still open): its replies count.
            self._replies[msg.reply] = classify_request(msg.subject)


def fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


@dataclass
class ServerCounts:
    """``/varz`` and ``/connz`` counters at one moment."""

    in_msgs: int
    out_msgs: int
    by_connection: dict[str, tuple[int, int, int]]
    """name (numbered when several share it) -> (in_msgs, out_msgs, subscriptions)."""

    @classmethod
    def read(cls, monitor: str) -> ServerCounts:
        varz = fetch_json(f"{monitor}/varz")
        connz = fetch_json(f"{monitor}/connz?subs=1&limit=4096")
        by: dict[str, tuple[int, int, int]] = {}
        for c in connz.get("connections", []):
            name = c.get("name") or f"cid {c['cid']}"
            key = f"{name} #{c['cid']}"
            by[key] = (int(c["in_msgs"]), int(c["out_msgs"]), len(c.get("subscriptions_list") or []))
        return cls(int(varz["in_msgs"]), int(varz["out_msgs"]), by)


def print_breakdown(
    title: str,
    before: ServerCounts,
    after: ServerCounts,
    kinds: Counter[str],
    own: Counter[str],
    n: float,
    unit: str,
) -> None:
    """Messages per ``unit`` (``n`` of them): the server's totals, by connection, by kind."""
    sniffed_out = sum(
        after.by_connection[k][1] - before.by_connection.get(k, (0, 0, 0))[1]
        for k in after.by_connection
        if k.startswith(SNIFFER)
    )
    d_in = after.in_msgs - before.in_msgs
    d_out = after.out_msgs - before.out_msgs - sniffed_out
    print(f"\n-- NATS messages per {unit}, {title}")
    print(f"nats-server (/varz): in {d_in / n:.2f}, out {d_out / n:.2f} (the sniffer's copies taken off)")
    print(f"{'connection (/connz)':<44} {'in':>8} {'out':>8} {'subs':>5}")
    rows = []
    for key, (i1, o1, subs) in after.by_connection.items():
        if key.startswith(SNIFFER):
            continue
        i0, o0, _ = before.by_connection.get(key, (0, 0, 0))
        if i1 - i0 or o1 - o0:
            rows.append((key, (i1 - i0) / n, (o1 - o0) / n, subs))
    grouped: dict[str, list[float]] = {}
    for key, i, o, subs in rows:
        name = key.rsplit(" #", 1)[0]
        g = grouped.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        g[0] += i
        g[1] += o
        g[2] += float(subs)
        g[3] += 1.0
    for name, (m_in, m_out, n_subs, count) in sorted(grouped.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        label = f"{name} (x{count:.0f})" if count > 1 else name
        print(f"{label:<44} {m_in:>8.2f} {m_out:>8.2f} {n_subs:>5.0f}")
    total = sum(kinds.values())
    print(f"{'kind (sniffer: every routed message)':<60} {'per ' + unit:>10}")
    for kind, count in kinds.most_common():
        if count / n >= 0.005:
            print(f"{kind:<60} {count / n:>10.3f}")
    small = sum(c for c in kinds.values() if c / n < 0.005)
    if small:
        print(f"{'(kinds under 0.005 each)':<60} {small / n:>10.3f}")
    print(f"{'all kinds':<60} {total / n:>10.3f}")
    if own:
        print(f"{'the benchmark own requests and replies, apart':<60} {sum(own.values()) / n:>10.3f}")


async def settle() -> None:
    """Let the sniffer's subscription take what the server already sent it."""
    await asyncio.sleep(0.3)
