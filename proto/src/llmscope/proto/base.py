"""The base of every wire event.

Rules of evolution (the contract other teams rely on):
- every event carries a ``type`` tag with its version, e.g. ``"telemetry.v1"``;
- fields added later get defaults, nothing is renamed or retyped within a version;
- readers ignore unknown fields, so an old reader decodes a newer message.
A breaking change is a new tag (``telemetry.v2``) on a new subject prefix.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

INT32_MAX = 2**31 - 1

# Units live in the type names so every schema says what a number means. Upper bounds keep every
# value (and every sum of a minute's values in the rollups) inside its Postgres column type.
Milliseconds = Annotated[float, Meta(ge=0, le=86_400_000, description="milliseconds, at most a day")]
Percent = Annotated[float, Meta(ge=0, le=100, description="percent, 0-100")]
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
NonEmptyStr = Annotated[str, Meta(min_length=1, max_length=256)]
EventId = Annotated[str, Meta(min_length=1, max_length=128, description="globally unique event id")]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of all wire events: an id (also the JetStream ``Nats-Msg-Id``) and a UTC timestamp."""

    id: EventId
    ts: Annotated[datetime, Meta(tz=True, description="when the event happened, UTC, RFC 3339")]


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""Timestamps outside [EARLIEST, LATEST) are refused: nothing real happened then, and dates near
year 1 or 9999 overflow the arithmetic of windows and uptimes downstream."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_ts(field: str, ts: datetime) -> None:
    """ValueError naming ``field`` when ``ts`` is outside [EARLIEST, LATEST)."""
    if not EARLIEST <= ts < LATEST:
        raise ValueError(f"`{field}` must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}, got {ts}")


def check_names(**names: str) -> None:
    """ValueError naming the field when a name holds a control character (a NUL, a newline...).

    Joined first: one scan for the usual case where all are clean."""
    if _CONTROL.search("".join(names.values())):
        for field, value in names.items():
            if _CONTROL.search(value):
                raise ValueError(f"`{field}` must not contain control characters")


def check_text(**texts: str | None) -> None:
    """ValueError naming the field when free text holds a NUL (Postgres text cannot store it)."""
    for field, value in texts.items():
        if value is not None and "\x00" in value:
            raise ValueError(f"`{field}` must not contain NUL characters")


def new_id() -> str:
    """A fresh random event id (UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)
