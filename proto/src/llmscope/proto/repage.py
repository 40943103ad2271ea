"""The alerter tells the API of violations it paged again after a hand resolution.

A violation resolved by hand that the engine never cleared is paged again by the alerter
(``STILL FAILING after resolved by ...``); the API's copy of it must then read open again, as
the channels were paged again. A violation in an incident is named in the incident's
``incident.v1`` event (``repaged``); one paged outside any incident (a warning, with
``alert.min_severity: warning``) has no such event, so the alerter asks the API over core NATS
request/reply (``subjects.api_violations_repaged()``, JSON bodies of the Structs below, API
replicas answering in one queue group) until an API answers ``ok``. The API reopens only a
resolution made before the page again, so a repeat (another replica, a restart, the incident's
event) changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto.incident import RepagedEpisode

MAX_EPISODES = 200
"""Episodes one request may carry (more are told in several requests)."""


class RepagedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.api_violations_repaged()``: these violations were paged again."""

    episodes: Annotated[tuple[RepagedEpisode, ...], Meta(max_length=MAX_EPISODES)]


class RepagedReply(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "error"]
    error: str = ""
    reopened: Annotated[
        tuple[str, ...], Meta(description="the episodes whose resolution this request undid")
    ] = ()
