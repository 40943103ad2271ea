"""The base of every wire event.

Rules of evolution (the contract other teams rely on):
- every event carries a ``type`` tag with its version, e.g. ``"telemetry.v1"``;
- fields added later get defaults, nothing is renamed or retyped within a version;
- readers ignore unknown fields, so an old reader decodes a newer message.
A breaking change is a new tag (``telemetry.v2``) on a new subject prefix.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
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
    check_name_values(tuple(names), tuple(names.values()))


def check_name_values(fields: tuple[str, ...], values: tuple[str, ...]) -> None:
    """:func:`check_names` for names read together (``operator.attrgetter``): no keyword dict per
    call. A clean joined string is printable, which ``str.isprintable`` answers in one C loop
    (a fifth of the regular expression's time); the expression, which allows the printable's
    other exceptions (U+2028, say), runs only when it is not."""
    joined = "".join(values)
    if joined.isprintable() or not _CONTROL.search(joined):
        return
    for field, value in zip(fields, values, strict=True):
        if _CONTROL.search(value):
            raise ValueError(f"`{field}` must not contain control characters")


def check_text(**texts: str | None) -> None:
    """ValueError naming the field when free text holds a NUL (Postgres text cannot store it)."""
    for field, value in texts.items():
        if value is not None and "\x00" in value:
            raise ValueError(f"`{field}` must not contain NUL characters")


class TimeOrderedIds:
    """UUIDv7 ids (RFC 9562) in 32 lowercase hex digits, increasing within a process.

    Layout: 48 bits of Unix time in ms, the version (7), a 42-bit counter (the 12 bits of rand_a
    and the top 30 of rand_b, after the variant), 32 random bits. The counter starts at a random
    value below 2**41 each new ms (method 1 of the RFC, so it rarely nears its end) and goes up by
    one for each further id in that ms, or while the clock reads earlier than the last id's ms
    (stepped back): the last ms is kept until the clock passes it. A counter at its end moves the
    time on by a ms. Across processes the random start and the 32 random bits of every id keep
    ids apart (a forked child draws a new start).
    """

    def __init__(
        self, clock: Callable[[], int] = time.time_ns, urandom: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._clock = clock
        self._urandom = urandom
        self._lock = threading.Lock()
        self._ms = -1
        self._counter = 0

    def reseed(self) -> None:
        """Draw a new counter start at the next id (in a forked child)."""
        self._ms = -1

    def _start(self) -> int:
        return int.from_bytes(self._urandom(6)) >> 7  # 41 bits: 2**41 ids in a ms before the end

    def __call__(self) -> str:
        with self._lock:
            ms = self._clock() // 1_000_000
            if ms > self._ms:
                self._ms, self._counter = ms, self._start()
            elif self._counter < COUNTER_END - 1:
                self._counter += 1
            else:
                self._ms, self._counter = self._ms + 1, self._start()
            ms, counter = self._ms, self._counter
        rand = int.from_bytes(self._urandom(4))
        return f"{ms & _MS_MASK:012x}7{counter >> 30:03x}{_VARIANT | (counter & _LOW_30) << 32 | rand:016x}"


COUNTER_END = 2**42
_MS_MASK = 2**48 - 1
_LOW_30 = 2**30 - 1
_VARIANT = 0b10 << 62
_ids = TimeOrderedIds()
os.register_at_fork(after_in_child=_ids.reseed)


def new_id() -> str:
    """A fresh event id: 32 lowercase hex digits, a UUIDv7 (time first, then counter and random).

    Ids of one process increase (in string order too), even when the clock steps back or many
    fall in one millisecond; ids of different processes do not collide (41 random bits of
    counter start and 32 random bits per id). Time first makes the telemetry table's primary key
    grow at its right edge instead of at random leaves (docs/benchmarks.md, "Event id order").
    The same shape as the uuid4 hex ids before it: readers see no difference."""
    return _ids()


def utcnow() -> datetime:
    return datetime.now(UTC)
