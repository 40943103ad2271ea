"""One holder per partition: its lease in the chart bucket.

One holder per partition: before consuming a partition a replica takes its lease (KV key
``_lease.p<k>``, written with compare-and-set on the revision, renewed every ``ttl / 4``). A
lease is free when deleted (released after a hand-over or on a clean stop), taken at once when
its holder has this replica's identity (``<LLMSCOPE_SPC_REPLICA>@<host>``: the same replica
restarted), and taken over when its revision has not changed for ``LLMSCOPE_SPC_LEASE_TTL_S``
(its holder died). A replica whose lease renewal fails, or that could not renew within
``0.75 ttl``, stops charting and acking before anybody else may take the partition, and exits 1.
So a partition moves only after its old owner stopped charting it (or its lease expired), and the
new owner resumes the partition from its checkpoint: never from the stream's start, never while
the old owner still charts it. Safety comes from the leases, liveness from the membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from llmscope.config.logs import get_logger

log = get_logger("llmscope.spc_engine")


def lease_key(partition: int) -> str:
    return f"_lease.p{partition}"


def nats_unavailable(exc: BaseException) -> bool:
    """NATS or JetStream cannot answer just now (disconnected, restarting, electing a leader)."""
    if isinstance(exc, (TimeoutError, NoRespondersError, ConnectionReconnectingError)):
        return True
    return isinstance(exc, APIError) and exc.code == 503


class LeaseLostError(RuntimeError):
    """This replica can no longer be sure it is the only holder of a partition."""


class PartitionLease:
    """Exclusive hold of one partition: a KV key written with compare-and-set (see module doc)."""

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        holder: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._clock = clock
        self._revision = 0
        self._renewed = float("-inf")
        self._lost = False
        # A renewal in flight when the lease is released (a hand-over) must neither fail the
        # release nor be taken for a lost lease.
        self._io = asyncio.Lock()
        self._released = False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the lease is ours (True), or until ``stop`` (False)."""
        seen: tuple[int, float] | None = None
        waiting_on = ""
        while not stop.is_set():
            try:
                entry = await self._kv.get(self.key)
            except KeyNotFoundError:  # never taken, or released (deleted)
                entry = None
            except Exception as exc:
                # An outage while waiting for a partition is waited out like the holder is.
                if not nats_unavailable(exc):
                    raise
                await self._pause(stop, f"NATS unavailable: {exc!r}")
                waiting_on = ""
                continue
            sent = self._clock()
            try:
                if entry is None or not entry.value:
                    revision = await self._kv.create(self.key, self.holder.encode())
                    return self._taken(revision, sent, "free")
                holder = entry.value.decode()
                revision = entry.revision or 0
                if seen is None or seen[0] != revision:
                    seen = (revision, sent)
                if holder == self.holder or sent - seen[1] >= self.ttl:
                    revision = await self._kv.update(self.key, self.holder.encode(), last=revision)
                    return self._taken(revision, sent, holder)
            except KeyWrongLastSequenceError:
                continue  # somebody else moved first: look again
            except Exception as exc:
                if not nats_unavailable(exc):
                    raise
                # Whether the write landed is unknown: the next read tells (a lease holding our
                # identity is taken at once).
                await self._pause(stop, f"NATS unavailable: {exc!r}")
                waiting_on = ""
                continue
            if waiting_on != holder:
                waiting_on = holder
                log.info("waiting for partition", lease=self.key, holder=holder, ttl_s=self.ttl)
            await self._pause(stop)
        return False

    async def _pause(self, stop: asyncio.Event, why: str = "") -> None:
        if why:
            log.warning("waiting for partition", lease=self.key, reason=why)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(self.ttl / 4, 1.0))

    def _taken(self, revision: int, sent: float, previous: str) -> bool:
        self._revision = revision
        self._renewed = sent
        self._lost = False
        self._released = False
        log.info("partition lease taken", lease=self.key, holder=self.holder, previous=previous)
        return True

    async def renew(self) -> None:
        async with self._io:
            if self._released:
                return
            sent = self._clock()
            try:
                self._revision = await self._kv.update(self.key, self.holder.encode(), last=self._revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
                self._lost = True
                raise LeaseLostError(f"{self.key} was taken over") from exc
            self._renewed = sent

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease is surely still ours."""
        if self._lost or self._clock() - self._renewed > 0.75 * self.ttl:
            self._lost = True
            raise LeaseLostError(f"{self.key} was not renewed in time")

    async def release(self) -> None:
        async with self._io:
            self._released = True
            if self._lost or not self._revision:
                return
            with contextlib.suppress(Exception):
                await self._kv.delete(self.key, last=self._revision)
            self._revision = 0


async def renew_leases(leases: Sequence[PartitionLease]) -> None:
    """Renew every lease at once, so a round takes one round trip however many partitions this
    replica holds: one after another, a NATS hiccup of a few seconds (each renewal waiting out its
    timeout in turn) left the last leases unrenewed past ``check()``'s bound, and the replica gave
    up partitions it still held. Raises :class:`LeaseLostError` when one was taken over; other
    failures are logged (``check()`` stops charting a partition whose lease stays unrenewed)."""
    results = await asyncio.gather(*(lease.renew() for lease in leases), return_exceptions=True)
    lost: LeaseLostError | None = None
    for lease, result in zip(leases, results, strict=True):
        if isinstance(result, LeaseLostError):
            lost = lost or result
        elif isinstance(result, BaseException):
            log.warning("lease renewal failed", lease=lease.key, error=repr(result))
    if lost is not None:
        raise lost
