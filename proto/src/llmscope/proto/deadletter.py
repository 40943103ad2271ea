"""``deadletter.v1``: a message no service could take, kept with the reason so nothing is lost."""

from __future__ import annotations

from typing import Literal

from llmscope.proto.base import Event


class DeadLetterEvent(Event, frozen=True, kw_only=True, tag="deadletter.v1"):
    """The original bytes (text, or base64 when not UTF-8), where they came from and why they failed."""

    source: str
    subject: str
    reason: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    stream_seq: int | None = None
    msg_id: str | None = None
    """The original's ``Nats-Msg-Id`` (a replay reuses it, so the stream de-duplicates it)."""
