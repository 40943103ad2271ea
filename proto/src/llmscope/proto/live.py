"""Notices between API processes for the dashboard's live updates (core NATS, never stored).

Only the API process that runs the persister knows when a batch of probes is committed, and
only it watches the SPC engine's chart bucket; the other API processes (replicas behind a load
balancer, or API processes beside a standalone persister) have open tabs too. The persister's
process publishes one :class:`LiveNotice` on ``subjects.api_live()`` per committed batch per
model and per traffic chart record, and every API process, itself included, turns it into
server-sent events for its own tabs. Core NATS: a notice nobody hears is lost and that is fine
(the pages keep a slow fallback poll).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(max_length=4096)]


class LiveNotice(msgspec.Struct, frozen=True, kw_only=True):
    """``stored``: new probes of ``provider``/``model`` are in Postgres, the latest at ``ts``;
    ``chart``: the engine wrote the record of chart ``chart``."""

    kind: Literal["stored", "chart"]
    provider: Name = ""
    model: Name = ""
    ts: datetime | None = None
    chart: Name = ""
