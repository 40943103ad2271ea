"""Every JetStream stream and key-value bucket LLMscope uses, declared once; made by the setup
step, or checked by a service that may not make them.

:func:`layout` is the one list: the streams of :func:`llmscope.bus.streams.stream_configs` and
the buckets of :func:`bucket_configs`. A new bucket is one more entry in :func:`bucket_configs`;
the service that uses it names it in its :func:`prepare` call, and the setup step
(``llmscope setup``, :mod:`llmscope.stack.setup`) then creates it like the others.

Two ways a service gets its streams and buckets (``LLMSCOPE_MANAGE_STREAMS``):

- true (the default, ``llmscope up`` on a NATS of your own and laptop runs): it creates every
  missing stream, brings each to the limits in its own environment, and creates its missing
  buckets, as every service always did.
- false (compose, Kubernetes, ``llmscope up`` with its own users): its NATS user may not create,
  change or delete a stream (``llmscope.proto.permissions``), so it only checks that each stream
  and bucket it needs exists with a compatible configuration. One that is missing or
  incompatible is logged once as an error naming it and the setup command, then checked again
  every :data:`RETRY_S` until the setup step has run (Kubernetes starts pods in no order):
  the service waits instead of crash-looping, and it is not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import PartitionMismatchError, ensure_streams, stream_configs, telemetry_partitions
from llmscope.config.logs import get_logger
from llmscope.config.startup import Stopped
from llmscope.proto import subjects

log = get_logger("llmscope.bus.layout")

SETUP_COMMAND = "llmscope setup"
"""What a service asks an operator to run (compose: the ``setup`` service; Kubernetes: the Job
``llmscope-setup``)."""

RETRY_S = 2.0
"""How often a service that may not make its streams looks again."""

DEFAULT_MEMBER_TTL_S = 10.0
"""The members bucket's max age without an SPC engine's setting (its default lease TTL)."""


def bucket_configs(
    settings: BusSettings,
    *,
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET,
    state_bucket: str = subjects.SPC_STATE_BUCKET,
    member_ttl_s: float = DEFAULT_MEMBER_TTL_S,
) -> list[KeyValueConfig]:
    """Every key-value bucket, from settings (``charts_bucket``: ``LLMSCOPE_SPC_CHARTS_BUCKET``;
    ``state_bucket``: ``LLMSCOPE_SPC_STATE_BUCKET``; ``member_ttl_s``: the SPC engine's lease
    TTL times ``MEMBER_TTLS``)."""

    def bucket(name: str, description: str) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=name,
            description=description,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.replicas,
        )

    return [
        bucket(charts_bucket, "LLMscope SPC charts as readers see them (phase, limits, baseline, view)"),
        bucket(
            state_bucket,
            "LLMscope SPC engine's private chart state (exact recovery; read by the engine only)",
        ),
        bucket(subjects.SPC_CONFIG_BUCKET, "LLMscope per-model SPC chart settings (overrides)"),
        bucket(subjects.MODELS_BUCKET, "LLMscope model switches"),
        bucket(subjects.SETTINGS_BUCKET, "LLMscope settings, mirrored by the API from its table"),
        KeyValueConfig(
            bucket=subjects.SPC_MEMBERS_BUCKET,
            description="LLMscope SPC engine replicas alive"
            " (each renews its key; the max age drops the dead)",
            history=1,
            ttl=member_ttl_s,
            # On disk although it only says who is alive now: a memory bucket is gone after a
            # nats-server restart, and an engine user that may not create streams (compose,
            # Kubernetes) could not make it again, so no replica could announce itself until
            # the setup step ran again by hand.
            storage=StorageType.FILE,
            replicas=settings.replicas,
        ),
    ]


@dataclass(frozen=True)
class Layout:
    """What the setup step makes: every stream and bucket."""

    settings: BusSettings
    buckets: list[KeyValueConfig]
    partitions: int | None = None
    """The telemetry stream's partitions (``LLMSCOPE_SPC_PARTITIONS``); None keeps the stream's."""

    @property
    def streams(self) -> list[StreamConfig]:
        return stream_configs(self.settings, self.partitions)

    def bucket(self, name: str) -> KeyValueConfig:
        for config in self.buckets:
            if config.bucket == name:
                return config
        raise KeyError(f"bucket {name!r} is not declared in llmscope.bus.layout.bucket_configs")


def layout(
    settings: BusSettings,
    *,
    partitions: int | None = None,
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET,
    state_bucket: str = subjects.SPC_STATE_BUCKET,
    member_ttl_s: float = DEFAULT_MEMBER_TTL_S,
) -> Layout:
    """The declared streams and buckets for these settings."""
    return Layout(
        settings=settings,
        buckets=bucket_configs(
            settings, charts_bucket=charts_bucket, state_bucket=state_bucket, member_ttl_s=member_ttl_s
        ),
        partitions=partitions,
    )


def _bucket_stream(name: str) -> str:
    return f"KV_{name}"


REMADE_WHEN_INCOMPATIBLE = frozenset({subjects.SPC_MEMBERS_BUCKET})
"""Buckets the setup step deletes and makes again when their storage differs from the declared
(a stream's storage cannot change in place): what they hold is renewed within seconds by the
services (the engines' member keys), so nothing is lost. Earlier versions kept the members
bucket in memory."""


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig, *, update: bool) -> None:
    """Create the bucket if missing; with ``update``, bring an existing one to ``config``'s
    description, max age and replicas (what may change on a live bucket)."""
    name = config.bucket or ""
    try:
        info = await js.stream_info(_bucket_stream(name))
    except NotFoundError:
        with contextlib.suppress(BadRequestError):  # created by another process meanwhile
            await js.create_key_value(config)
            return
        info = await js.stream_info(_bucket_stream(name))
    if not update:
        return
    current = info.config
    if current.storage != config.storage and name in REMADE_WHEN_INCOMPATIBLE:
        log.info("bucket made again with the declared storage", bucket=name, was=str(current.storage))
        await js.delete_stream(_bucket_stream(name))
        with contextlib.suppress(BadRequestError):  # made by a service meanwhile
            await js.create_key_value(config)
        return
    wanted_age = config.ttl or 0.0
    if (current.max_age or 0.0, current.num_replicas, current.description) == (
        wanted_age,
        config.replicas,
        config.description,
    ):
        return
    current.max_age = wanted_age
    if wanted_age and (current.duplicate_window or 0) > wanted_age:
        # The server refuses a window longer than the max age (nats-py sizes a new bucket's so).
        current.duplicate_window = wanted_age
    current.num_replicas = config.replicas
    current.description = config.description
    await js.update_stream(current)


async def apply(js: JetStreamContext, wanted: Layout) -> None:
    """Create every stream and bucket, or bring it to the declared configuration (the setup
    step; idempotent). Raises :class:`llmscope.bus.streams.PartitionMismatchError` when the
    telemetry stream has another partition count than the one asked for."""
    await ensure_streams(js, wanted.settings, wanted.partitions)
    for config in wanted.buckets:
        await ensure_bucket(js, config, update=True)


async def prepare(
    js: JetStreamContext,
    settings: BusSettings,
    stop: asyncio.Event | None,
    *,
    buckets: Sequence[KeyValueConfig] = (),
    partitions: int | None = None,
) -> None:
    """Make sure every stream and the ``buckets`` this service uses are there before it starts.

    ``settings.manage_streams``: create or update the streams (:func:`ensure_streams`) and
    create the missing buckets. Otherwise check them, waiting for the setup step (see the module
    docstring); raises :class:`~llmscope.config.startup.Stopped` when ``stop`` is set meanwhile,
    and :class:`~llmscope.bus.streams.PartitionMismatchError` when the telemetry stream has
    another partition count than ``partitions``.
    """
    if settings.manage_streams:
        await ensure_streams(js, settings, partitions)
        for config in buckets:
            await ensure_bucket(js, config, update=False)
        return
    reported: set[str] = set()
    while True:
        problems = await missing(js, stream_configs(settings, partitions), buckets, partitions)
        if not problems:
            if reported:
                log.info("streams and buckets are set up", waited_for=",".join(sorted(reported)))
            return
        for name, why in problems.items():
            if name not in reported:
                log.error(
                    "a stream or bucket this service needs is not set up; waiting for the setup step",
                    stream=name,
                    problem=why,
                    hint=f"run `{SETUP_COMMAND}` as the setup user (compose: the `setup` service;"
                    " Kubernetes: the Job llmscope-setup); this service may not create streams"
                    " (LLMSCOPE_MANAGE_STREAMS=false)",
                )
                reported.add(name)
        if stop is None:
            await asyncio.sleep(RETRY_S)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_S)
        if stop.is_set():
            raise Stopped


async def missing(
    js: JetStreamContext,
    streams: Sequence[StreamConfig],
    buckets: Sequence[KeyValueConfig],
    partitions: int | None = None,
) -> dict[str, str]:
    """Each stream (by its name; a bucket by its stream ``KV_<bucket>``) that is missing or
    incompatible, with the reason; empty when all are there."""
    problems: dict[str, str] = {}
    for wanted in streams:
        name = wanted.name or ""
        try:
            current = (await js.stream_info(name)).config
        except NotFoundError:
            problems[name] = "missing"
            continue
        if set(current.subjects or ()) != set(wanted.subjects or ()):
            problems[name] = (
                f"subjects {sorted(current.subjects or ())}, expected {sorted(wanted.subjects or ())}"
            )
        elif name == subjects.STREAM_TELEMETRY and partitions is not None:
            have = telemetry_partitions(current)
            if have is None:
                problems[name] = f"not partitioned, {partitions} partitions expected"
            elif have != partitions:
                # Setup cannot fix this one: the count is fixed for the stream's life.
                raise PartitionMismatchError(
                    f"the telemetry stream has {have} partitions, {partitions} were asked for:"
                    " the number is fixed for the stream's life (re-partitioning: llmscope.bus.streams)"
                )
    for config in buckets:
        name = _bucket_stream(config.bucket or "")
        try:
            current = (await js.stream_info(name)).config
        except NotFoundError:
            problems[name] = "missing"
            continue
        if current.storage != config.storage:
            problems[name] = f"storage {_storage(current.storage)}, expected {_storage(config.storage)}"
    return problems


def _storage(storage: StorageType | str | None) -> str:
    """``file`` or ``memory`` (the server answers the plain word, the declaration an enum)."""
    return storage.value if isinstance(storage, StorageType) else str(storage)
