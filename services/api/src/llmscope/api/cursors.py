"""Page cursors of the API's lists (violations, incidents, notifications): the last item's time and
id, as a string the API issued and takes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class BadCursor(ValueError):
    """A pagination cursor this API did not issue."""


CURSOR_PATTERN = r"^[0-9]{1,16}~[^\x00]*$"
"""A page cursor: the last item's time in microseconds since the epoch, ``~``, its id. Not
opaque, so the document can state exactly which strings are cursors (issue 9: a base64 cursor
of any string was "valid" to the schema and refused by the API)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(ts: datetime, vid: str) -> str:
    return f"{(ts - _EPOCH) // timedelta(microseconds=1)}~{vid}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, sep, vid = cursor.partition("~")
    if not sep or not micros.isascii() or not micros.isdigit() or len(micros) > 16:
        raise BadCursor("invalid cursor: pass back a `next_cursor` as it was given")
    return _EPOCH + timedelta(microseconds=int(micros)), vid
