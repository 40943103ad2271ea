"""What a person did to a violation episode through the API: acknowledged it or resolved it by
hand (``violation_action.v1``).

The API owns the ``violations`` table; the alerter learns of these actions only from this event
(architecture rule: each service owns its tables, others ask it over the bus). Each event is the
episode's whole human state after the action, not a delta: a reader applying it twice, or an
older one after a newer, ends in the same place (the first acknowledgement and the first
resolution are kept, as the API keeps them).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from llmscope.proto.base import Event, NonEmptyStr
from llmscope.proto.telemetry import ProviderKind

ViolationAction = Literal["acknowledged", "resolved"]
VIOLATION_ACTIONS: tuple[ViolationAction, ...] = ("acknowledged", "resolved")


class ViolationActionEvent(Event, frozen=True, kw_only=True, tag="violation_action.v1"):
    """An episode acknowledged or resolved by a person; ``id`` is deterministic per state
    (``<episode_id>:<action>``, then ``:<digest of the note>`` when there is a note), so a
    re-publication is dropped by the stream's duplicate window and a new note is not."""

    action: Annotated[ViolationAction, Meta(description="what was done last: acknowledged or resolved")]
    violation_id: Annotated[str, Meta(description="the API's violation id (its open event's id)")]
    episode_id: Annotated[str, Meta(description="the episode (violation.v1 episode_id)")]
    provider: ProviderKind
    model: NonEmptyStr
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: Annotated[str | None, Meta(description="who resolved it by hand; None while not")] = None
    resolved_at: datetime | None = None
    note: Annotated[str | None, Meta(description="the person's note, as the API stores it")] = None


def action_id(episode_id: str, action: ViolationAction, note: str | None = None) -> str:
    """The event id (and ``Nats-Msg-Id``): one per episode, action and note. The first
    acknowledgement and resolution never change (the API keeps the first), but the note does:
    with the id of the episode and action alone, a second acknowledgement with a new note within
    the stream's duplicate window was dropped as a duplicate, and the alerter never saw it."""
    if note is None:
        return f"{episode_id}:{action}"
    return f"{episode_id}:{action}:{hashlib.blake2b(note.encode(), digest_size=8).hexdigest()}"
