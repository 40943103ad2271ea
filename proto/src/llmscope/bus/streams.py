"""Creating or updating LLMscope's JetStream streams, idempotently, at every service start.

Telemetry partitions: the telemetry stream stores each message under its public subject with
one more token, the model's partition (a subject transform, applied by the server as it stores
the message)::

    published (and seen by core NATS subscribers): llmscope.telemetry.v1.<provider>.<model>
    stored (and seen by stream consumers):         llmscope.telemetry.v1.<provider>.<model>.<k>

``k = fnv1a32(<provider token><model token>) % P`` (nats-server's ``{{partition(P,1,2)}}``;
:func:`telemetry_partition` computes the same in Python), so one consumer can read exactly one
partition (``subjects.telemetry_partition_filter``) and the SPC engine can split the charts
among its replicas without reading everything. Consumers of ``llmscope.telemetry.v1.>`` are unaffected.

P is fixed for the life of the stream: the transform applies to messages as they are stored, so
changing P would move models to other partitions mid-stream. :func:`ensure_streams` keeps the
stream's P unless asked for one (only the SPC engine asks), and refuses a different P. Messages
stored before the transform existed (streams created by older versions) have no partition
token: no partition consumer reads them.

Re-partitioning (a new P): stop every SPC engine (a clean stop snapshots every chart), note the
stream's last sequence S, set the transform's P by hand (``nats stream edit``), write S into
every ``_checkpoint.p<k>`` key of the chart bucket for k below the new P (delete the others),
then start the engines with the new ``LLMSCOPE_SPC_PARTITIONS``.
"""

from __future__ import annotations

import functools
import re

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import NotFoundError

from llmscope.bus.settings import BusSettings
from llmscope.proto import subjects

DEFAULT_TELEMETRY_PARTITIONS = 16
"""Partitions of a telemetry stream created by a service that does not ask for a number."""

_PARTITIONS_RE = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*,\s*1\s*,\s*2\s*\)\s*\}\}")


class PartitionMismatchError(ValueError):
    """The telemetry stream is partitioned differently from what a service asked for."""


def telemetry_transform(partitions: int) -> SubjectTransform:
    """The telemetry stream's subject transform: append the partition of provider and model."""
    return SubjectTransform(src=subjects.TELEMETRY_PUBLISHED, dest=subjects.telemetry_stored(partitions))


def telemetry_partitions(config: StreamConfig) -> int | None:
    """P of a telemetry stream's configuration (None: not partitioned)."""
    transform = config.subject_transform
    match = _PARTITIONS_RE.search(transform.dest or "") if transform is not None else None
    return int(match.group(1)) if match else None


@functools.lru_cache(maxsize=8192)
def telemetry_partition(provider: str, model: str, partitions: int) -> int:
    """The partition nats-server stores a model's telemetry under (FNV-1a 32 of the tokens)."""
    h = 0x811C9DC5
    for byte in (subjects.encode_token(provider) + subjects.encode_token(model)).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def stream_configs(settings: BusSettings, partitions: int | None = None) -> list[StreamConfig]:
    """The desired configuration of every stream, from settings.

    ``partitions`` None: the telemetry stream without a transform (:func:`ensure_streams` then
    keeps whatever the stream has, or uses :data:`DEFAULT_TELEMETRY_PARTITIONS` for a new one).
    """
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": settings.duplicate_window_s,
        "num_replicas": settings.replicas,
    }
    # Violations and incidents are few and their ids deterministic: a long window lets an engine
    # that was down for hours replay its last seconds without publishing a single duplicate.
    events = {
        **common,
        "duplicate_window": min(settings.violations_duplicate_window_s, settings.violations_max_age_s),
    }
    traffic_window = min(settings.violations_duplicate_window_s, settings.violations_max_age_s)
    traffic_window = min(traffic_window, settings.telemetry_max_age_s)
    return [
        StreamConfig(
            name=subjects.STREAM_TELEMETRY,
            description="LLMscope probe telemetry (telemetry.v1)",
            subjects=[subjects.TELEMETRY_ALL],
            max_age=settings.telemetry_max_age_s,
            max_bytes=settings.telemetry_max_bytes,
            subject_transform=telemetry_transform(partitions) if partitions else None,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.STREAM_VIOLATIONS,
            description="LLMscope control-chart violations (violation.v1)",
            subjects=[subjects.VIOLATIONS_ALL],
            max_age=settings.violations_max_age_s,
            **events,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.STREAM_DEADLETTER,
            description="Messages LLMscope could not process, with the reason (deadletter.v1)",
            subjects=[subjects.DEADLETTER_ALL],
            max_age=settings.deadletter_max_age_s,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.STREAM_INCIDENTS,
            description="LLMscope incidents: grouped violations and their analysis (incident.v1)",
            subjects=[subjects.INCIDENTS_ALL],
            max_age=settings.violations_max_age_s,
            **events,  # type: ignore[arg-type]
        ),
        StreamConfig(
            # The alerter's durable consumer reads these; they wait here while it is down.
            name=subjects.STREAM_VIOLATION_ACTIONS,
            description="LLMscope violations acknowledged or resolved by a person through the API"
            " (violation_action.v1)",
            subjects=[subjects.VIOLATION_ACTIONS_ALL],
            max_age=settings.violations_max_age_s,
            **events,  # type: ignore[arg-type]
        ),
        StreamConfig(
            # Minute ids are deterministic like violation ids: the same long duplicate window.
            name=subjects.STREAM_TRAFFIC,
            description="LLMscope real traffic per minute and subgroup (traffic_minute.v1) and GenAI"
            " metric data points (traffic_histogram.v1)",
            subjects=[subjects.TRAFFIC_MINUTES_ALL, subjects.TRAFFIC_HISTOGRAMS_ALL],
            max_age=settings.telemetry_max_age_s,
            # ... within the stream's own max age (the server refuses a longer window).
            **{**events, "duplicate_window": traffic_window},  # type: ignore[arg-type]
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: BusSettings, partitions: int | None = None) -> None:
    """Create each stream, or bring an existing one to the configured limits.

    ``partitions``: the telemetry stream's P (see the module docstring). None keeps the stream's
    own (a new stream gets :data:`DEFAULT_TELEMETRY_PARTITIONS`); a number partitions a stream
    that is not partitioned yet and raises :class:`PartitionMismatchError` for one with another P.
    """
    for config in stream_configs(settings, partitions):
        try:
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            if config.name == subjects.STREAM_TELEMETRY and partitions is None:
                config.subject_transform = telemetry_transform(DEFAULT_TELEMETRY_PARTITIONS)
            await js.add_stream(config)
            continue
        if config.name == subjects.STREAM_TELEMETRY:
            current = telemetry_partitions(info.config)
            if partitions is None or current is not None:
                if partitions is not None and current != partitions:
                    raise PartitionMismatchError(
                        f"the telemetry stream has {current} partitions, {partitions} were asked for:"
                        " the number is fixed for the stream's life (re-partitioning: llmscope.bus.streams)"
                    )
                config.subject_transform = info.config.subject_transform
        await js.update_stream(config)
