"""Creating or updating LLMscope's JetStream streams, idempotently, at every service start."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from llmscope.bus.settings import BusSettings
from llmscope.proto import subjects


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    """The desired configuration of every stream, from settings."""
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": settings.duplicate_window_s,
        "num_replicas": settings.replicas,
    }
    return [
        StreamConfig(
            name=subjects.STREAM_TELEMETRY,
            description="LLMscope probe telemetry (telemetry.v1)",
            subjects=[subjects.TELEMETRY_ALL],
            max_age=settings.telemetry_max_age_s,
            max_bytes=settings.telemetry_max_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.STREAM_VIOLATIONS,
            description="LLMscope control-chart violations (violation.v1)",
            subjects=[subjects.VIOLATIONS_ALL],
            max_age=settings.violations_max_age_s,
            **common,  # type: ignore[arg-type]
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
            **common,  # type: ignore[arg-type]
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: BusSettings) -> None:
    """Create each stream, or bring an existing one to the configured limits."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
