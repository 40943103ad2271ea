"""The base of every wire event.

Rules of evolution (the contract other teams rely on):
- every event carries a ``type`` tag with its version, e.g. ``"telemetry.v1"``;
- fields added later get defaults, nothing is renamed or retyped within a version;
- readers ignore unknown fields, so an old reader decodes a newer message.
A breaking change is a new tag (``telemetry.v2``) on a new subject prefix.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

# Units live in the type names so every schema says what a number means.
Milliseconds = Annotated[float, Meta(ge=0, description="milliseconds")]
Percent = Annotated[float, Meta(ge=0, le=100, description="percent, 0-100")]
Count = Annotated[int, Meta(ge=0)]
NonEmptyStr = Annotated[str, Meta(min_length=1, max_length=256)]
EventId = Annotated[str, Meta(min_length=1, max_length=128, description="globally unique event id")]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of all wire events: an id (also the JetStream ``Nats-Msg-Id``) and a UTC timestamp."""

    id: EventId
    ts: Annotated[datetime, Meta(tz=True, description="when the event happened, UTC, RFC 3339")]


def new_id() -> str:
    """A fresh random event id (UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)
