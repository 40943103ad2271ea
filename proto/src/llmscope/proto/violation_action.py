"""What a person did to a violation episode through the API: acknowledged it or resolved it by
hand (``violation_action.v1``).

The API owns the ``violations`` table; the alerter learns of these actions only from this event
(architecture rule: each service owns its tables, others ask it over the bus). Each event is the
episode's whole human state after the action, not a delta, and ``seq`` orders them: the API counts
the actions on the episode's row in the UPDATE that records each one, so a reader keeps the
state of the highest ``seq`` it saw and an older event delivered late (a redelivery, a replay,
the outbox's republishing racing a request's own publish, two API replicas) changes nothing.
Events published before ``seq`` was added have none: a reader takes them as older than any
event with one.
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
    (``<episode_id>:<action>:<seq>``; before ``seq``, ``<episode_id>:<action>`` then
    ``:<digest of the note>`` when there is a note), so a re-publication is dropped by the
    stream's duplicate window and a new action is not."""

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
    # Added later in v1: events of older APIs have none (a reader takes them as older than any
    # event that has one).
    seq: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(
            description="the episode's action count at the API (1 for its first action, one more for"
            " each): of two events of an episode, the one with the higher seq is the newer state;"
            " null in events published before it was added, older than any with one",
        ),
    ] = None


def action_id(
    episode_id: str, action: ViolationAction, note: str | None = None, seq: int | None = None
) -> str:
    """The event id (and ``Nats-Msg-Id``): one per episode and ``seq`` (one per state). Without
    ``seq`` (older APIs, tests of them), one per episode, action and note: the first
    acknowledgement and resolution never change, but the note does, and with the episode and
    action alone a new note within the duplicate window was dropped as a duplicate. By note a
    note changed back (A, B, then A again) was dropped too; by ``seq`` it is not."""
    if seq is not None:
        return f"{episode_id}:{action}:{seq}"
    if note is None:
        return f"{episode_id}:{action}"
    return f"{episode_id}:{action}:{hashlib.blake2b(note.encode(), digest_size=8).hexdigest()}"
