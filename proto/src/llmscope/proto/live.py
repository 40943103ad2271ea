"""Notices between API processes for the dashboard's live updates (core NATS, never stored).

Only the API process that runs the persister knows when a batch of probes is committed, and
only it watches the SPC engine's chart bucket; the other API processes (replicas behind a load
balancer, or API processes beside a standalone persister) have open tabs too. The persister's
process publishes one :class:`LiveNotice` on ``subjects.api_live()`` per committed batch (naming
each model with new probes and its latest probe, up to ``POINTS_PER_NOTICE`` models a notice) and
per traffic chart record, and every API process, itself included, turns it into
server-sent events for its own tabs. Core NATS: a notice nobody hears is lost and that is fine
(the pages keep a slow fallback poll).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(max_length=4096)]


POINTS_PER_NOTICE = 256
"""Models named by one ``stored`` notice: a batch of probes of thousands of models is told in a
few messages, each far below NATS's 1 MB payload limit even with long model names."""


class StoredPoint(msgspec.Struct, frozen=True, array_like=True):
    """The latest new probe of one model in a committed batch."""

    provider: Name
    model: Name
    ts: datetime


class LiveNotice(msgspec.Struct, frozen=True, kw_only=True):
    """``stored``: new probes are in Postgres, of each model in ``points`` (the latest at its
    ``ts``), or of ``provider``/``model`` with its latest at ``ts`` (the form before ``points``,
    one notice per model); ``chart``: the engine wrote the record of chart ``chart``."""

    kind: Literal["stored", "chart"]
    provider: Name = ""
    model: Name = ""
    ts: datetime | None = None
    chart: Name = ""
    points: list[StoredPoint] = []
