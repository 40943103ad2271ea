"""Membership: the live replicas sharing the partitions, and who wants which.

Membership (who shares the partitions): every replica announces itself in the KV bucket
``llmscope_spc_members`` (key ``m.<hex of its identity>``, value its identity and a random
instance id) every ``ttl / 4`` (at most :data:`MEMBER_ROUND_S`); the bucket's max age
(``LLMSCOPE_SPC_LEASE_TTL_S``, set by the first replica that creates it) removes a replica that
stopped announcing, and a replica that stops cleanly deletes its key. Each round (as often, and
at once when a watch on the bucket sees a key it does not know appear, or a key deleted:
:meth:`Membership.watch`) a replica reads the live members, sorts their identities, and
wants the partitions k with ``k % len(members) == its rank``: it starts taking the ones it wants
and hands over the ones it no longer wants (it stops that partition's consumer after the batch in
hand, snapshots, forgets the partition's charts and releases its lease), so the replica that wants
it next takes it at once. Replicas that briefly see different members may both want a partition
(the lease lets only one chart it) or neither (it is taken one round later). A second live
process announcing the same identity is refused (exit 1): it would share this one's leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Collection

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from llmscope.bus.kv import bucket_keys
from llmscope.bus.layout import SETUP_COMMAND, bucket_configs
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.spc_engine.settings import SpcSettings

log = get_logger("llmscope.spc_engine")


def owned_partitions(partitions: int, replicas: int, replica: int) -> list[int]:
    """The partitions the member ranked ``replica`` among ``replicas`` live members wants."""
    return [k for k in range(partitions) if k % replicas == replica]


MEMBERS_BUCKET = subjects.SPC_MEMBERS_BUCKET
MEMBER_TTLS = 1.0
"""The members bucket's max age, in lease TTLs: a replica that stopped announcing itself is
dropped after this, so its partitions are wanted by others when its leases expire. No shorter
than a lease needs: a replica that could not announce itself for a TTL has given up its leases
(``PartitionLease.check``)."""


MEMBER_ROUND_S = 2.5
"""The longest time between two membership rounds (announce, read the members), whatever the
lease TTL: a quarter of the default TTL. Joins and clean leaves start a round at once
(:meth:`Membership.watch`); the rounds were every second before that watch (three requests a
second to nats-server, most of its wake-ups with the engine idle)."""


def member_key(holder: str) -> str:
    # Identities hold characters KV keys refuse ('@'); hex keeps every identity apart.
    return "m." + holder.encode().hex()


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's announcement in the members bucket."""

    holder: str
    instance: str


class MemberConflictError(RuntimeError):
    """Another live process announces itself with this replica's identity (it would share its leases)."""


def members_config(settings: SpcSettings) -> KeyValueConfig:
    """The members bucket as ``llmscope.bus.layout`` declares it (the setup step makes the same)."""
    declared = bucket_configs(settings.bus, member_ttl_s=MEMBER_TTLS * settings.lease_ttl_s)
    config = next(c for c in declared if c.bucket == subjects.SPC_MEMBERS_BUCKET)
    return dataclasses.replace(config, bucket=settings.members_bucket)


async def open_members(js: JetStreamContext, settings: SpcSettings) -> KeyValue:
    """The members bucket, created with a max age of ``MEMBER_TTLS`` lease TTLs if missing."""
    config = members_config(settings)
    for _ in range(3):
        try:
            return await js.key_value(settings.members_bucket)
        except BucketNotFoundError:
            pass
        with contextlib.suppress(BadRequestError):  # created by another replica meanwhile
            return await js.create_key_value(config)
    return await js.key_value(settings.members_bucket)


class MembersGoneError(RuntimeError):
    """The members bucket is gone and this replica's user may not make it again."""


async def recreate_members(js: JetStreamContext, settings: SpcSettings) -> bool:
    """Make the members bucket again if it is gone; whether it was gone.

    It is on disk, but an earlier version kept it in memory, where a nats-server restart dropped
    it; an operator may also delete it. Without this every replica's announcement failed until
    one restarted, and a replica started meanwhile could not be told apart from none. With
    ``LLMSCOPE_MANAGE_STREAMS=false`` the user may not create streams (``llmscope.proto.permissions``): raises
    :class:`MembersGoneError` (the setup step must run again; the partitions stay as they are)."""
    try:
        await js.stream_info(f"KV_{settings.members_bucket}")
        return False
    except NotFoundError:
        pass
    if not settings.bus.manage_streams:
        raise MembersGoneError(
            f"the members bucket {settings.members_bucket} is gone (nats-server restarted?) and this"
            f" user may not create it: run `{SETUP_COMMAND}` as the setup user"
        )
    with contextlib.suppress(BadRequestError):  # made by another replica meanwhile
        await js.create_key_value(members_config(settings))
    return True


class Membership:
    """This replica's key in the members bucket, and the live members (see the module doc)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, holder: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self.holder = holder
        self.key = member_key(holder)
        self.instance = uuid.uuid4().hex
        self._value = msgspec.json.encode(Member(holder=holder, instance=self.instance))
        self._revision = 0

    async def announce(self) -> None:
        """Put this replica's key; raise :class:`MemberConflictError` if another process took it."""
        if self._revision:
            try:
                self._revision = await self._kv.update(self.key, self._value, last=self._revision)
                return
            except KeyWrongLastSequenceError:
                other = await self._instance()
                if other is not None and other != self.instance:
                    raise MemberConflictError(
                        f"another live replica announces itself as {self.holder!r}: give every "
                        "replica on a host its own LLMSCOPE_SPC_REPLICA"
                    ) from None
        # The first announcement, or after the key expired (this replica stalled past the max
        # age) or an update whose answer was lost: an unconditional put (a crashed predecessor
        # with the same identity is replaced).
        self._revision = await self._kv.put(self.key, self._value)

    async def _instance(self) -> str | None:
        try:
            entry = await self._kv.get(self.key)
        except KeyNotFoundError:
            return None
        try:
            return msgspec.json.decode(entry.value or b"", type=Member).instance
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def live(self) -> list[str]:
        """The identities of the live members, sorted (this replica always among them)."""
        keys = await bucket_keys(self._js, self._bucket)

        async def holder(key: str) -> str | None:
            try:
                entry = await self._kv.get(key)
                return msgspec.json.decode(entry.value or b"", type=Member).holder
            except KeyNotFoundError:  # left, or expired, since listed
                return None
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignored a malformed member", key=key)
                return None

        found = await asyncio.gather(*(holder(k) for k in keys))
        return sorted({h for h in found if h} | {self.holder})

    async def watch(self, changed: asyncio.Event, known: Callable[[], Collection[str]], retry: float) -> None:
        """Set ``changed`` when another replica joins (a key not among ``known()`` members) or
        leaves cleanly (its key deleted), until cancelled.

        The rounds (every ``ttl / 4``) are what membership rests on: they read the bucket, and
        they alone see a key that expired (a replica that died: its partitions wait for their
        leases' TTL anyway). This only starts a round at once when somebody joins or leaves, so
        a rebalance does not wait for the next round; a watch that fails (NATS away, the bucket
        made again) is made again after ``retry`` s, and meanwhile the rounds notice the same,
        later. It replaces a round every second: three requests a second to nats-server (an
        announce, the bucket's subjects and each member's value), most of its wake-ups with the
        engine idle."""
        while True:
            try:
                watcher = await self._kv.watchall()
            except Exception as exc:
                log.debug("members not watched; the rounds notice changes", error=repr(exc))
                await asyncio.sleep(retry)
                continue
            try:
                while True:
                    try:
                        entry = await watcher.updates(timeout=3600.0)  # type: ignore[no-untyped-call]
                    except NatsTimeoutError:
                        continue
                    if entry is None or entry.key == self.key:
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE) or entry.key not in {
                        member_key(h) for h in known()
                    }:
                        changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("members watch ended; made again", error=repr(exc))
                await asyncio.sleep(retry)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def leave(self) -> None:
        if self._revision:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.key, last=self._revision)
            self._revision = 0
