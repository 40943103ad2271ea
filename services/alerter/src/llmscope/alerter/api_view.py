"""What the alerter learns from the API, over the bus only (it never reads the API's tables):
the settings (the API mirrors its table into ``subjects.SETTINGS_BUCKET``) and the telemetry
that describes a violation (request/reply, ``llmscope.proto.telemetry_context``).

People's acknowledgements and hand resolutions come as ``violation_action.v1`` events
(``Alerter.on_violation_actions``). Without an API (or with it down) every read here answers
empty and the pages go without context, as they did when the alerter ran without the API; the
settings keep their last value read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from llmscope.alerter.analysis import TelemetryPoint
from llmscope.alerter.messages import FailedProbe, Outage, is_outage, since
from llmscope.alerter.model import Alert
from llmscope.alerter.notifiers.base import ContextPoint
from llmscope.bus.kv import bucket_keys
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.incident import RepagedEpisode
from llmscope.proto.repage import RepagedReply, RepagedRequest
from llmscope.proto.telemetry import NUMERIC_METRICS
from llmscope.proto.telemetry_context import (
    MAX_QUERIES,
    TOO_LARGE,
    ContextQuery,
    ContextReply,
    ContextRequest,
    OutageQuery,
    OutageReply,
    OutageRequest,
    PointsReply,
    PointsRequest,
)
from llmscope.proto.violation import ViolationEvent

log = get_logger("llmscope.alerter.api_view")

CONTEXT_POINTS = 10
REQUEST_TIMEOUT_S = 5.0
POINTS_PER_REQUEST = 1000
"""Telemetry ids asked for in one request: a reply of about 200 KB, well under NATS's 1 MB."""
CONTEXT_QUERIES_PER_REQUEST = 100
"""Violations whose context is asked for in one request (21 probes each: about 300 KB). All of
a delivery's at once (up to ``MAX_QUERIES``) passed NATS's 1 MB max payload from about 400."""
OUTAGE_PROBES_PER_REQUEST = 1000
"""Failed probes one outage request may bring back (``recent`` per violation): an analysis's 200
per outage for every model of a host cascade at once passed NATS's 1 MB max payload. Their error
texts (2,000 characters each at most) could still pass it: the API shortens them to fit."""

R = TypeVar("R", ContextReply, OutageReply, PointsReply)
Q = TypeVar("Q")


class ApiView:
    """The API as the alerter sees it over NATS; ``nc`` None: no API (every read empty)."""

    def __init__(
        self,
        nc: NATS | None,
        *,
        bucket: str = subjects.SETTINGS_BUCKET,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._nc = nc
        self.bucket = bucket
        self._timeout = timeout
        self._settings: dict[str, object] = {}
        self._repage_failing = False

    # -- settings -----------------------------------------------------------------------------

    async def settings(self) -> dict[str, object]:
        """The API's settings as key -> JSON text (as its table holds them), read whole from the
        bucket; the last value read when NATS fails, empty when the bucket is not there."""
        if self._nc is None:
            return {}
        js = self._nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            return {}
        except (NatsError, TimeoutError) as exc:
            log.warning("cannot read the API's settings; the last ones read stand", error=repr(exc))
            return dict(self._settings)
        values: dict[str, object] = {}
        try:
            for key in await bucket_keys(js, self.bucket):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue  # deleted (its marker is still listed)
                if entry.value:
                    try:
                        (name,) = subjects.parse_kv_key(key, 1)
                    except ValueError as exc:
                        # That key only: ending the read here kept (and cached) none of the
                        # settings listed after it.
                        log.warning("ignored a malformed settings key", error=str(exc))
                        continue
                    values[name] = entry.value.decode()
        except (NatsError, TimeoutError) as exc:
            log.warning("cannot read the API's settings; the last ones read stand", error=repr(exc))
            return dict(self._settings)
        self._settings = values
        return dict(values)

    # -- telemetry ----------------------------------------------------------------------------

    async def _ask(
        self,
        subject: str,
        queries: Sequence[Q],
        request: Callable[[tuple[Q, ...]], msgspec.Struct],
        reply_type: type[R],
    ) -> list[R] | None:
        """The replies to ``request(queries)``: one, or, when the API answers that its reply
        would not fit NATS's max payload, those of each half in turn (down to one query: the API
        shortens an outage's errors to fit, and long names could still make a chunk too large).
        None when a reply did not come or was an error (what came before it is kept)."""
        if self._nc is None:
            return None
        try:
            data = msgspec.json.encode(request(tuple(queries)))
            msg = await self._nc.request(subject, data, timeout=self._timeout)
            reply = msgspec.json.decode(msg.data, type=reply_type)
        except (NatsError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            # No API (no responders) or a slow one: the message goes without this context.
            log.warning("no telemetry from the API", subject=subject, error=repr(exc))
            return None
        if reply.status == "ok":
            return [reply]
        if reply.error.startswith(TOO_LARGE) and len(queries) > 1:
            half = len(queries) // 2
            first = await self._ask(subject, queries[:half], request, reply_type)
            if first is None:
                return None
            rest = await self._ask(subject, queries[half:], request, reply_type)
            return None if rest is None else first + rest
        log.warning("the API could not answer", subject=subject, error=reply.error)
        return None

    async def context_for(self, events: Sequence[ViolationEvent]) -> dict[str, tuple[ContextPoint, ...]]:
        """+/-10 probes around each violation's last point; {} without an API."""
        queries = [
            ContextQuery(
                episode_id=ev.episode_id,
                provider=ev.provider,
                model=ev.model,
                prompt_id=ev.prompt_id,
                target=ev.target,
                metric=ev.metric,
                pivot=max(ev.point_ts) if ev.point_ts else ev.ts,
            )
            for ev in events
            if ev.metric in NUMERIC_METRICS
        ]
        patterns = {ev.episode_id: set(ev.point_ids) for ev in events}
        out: dict[str, tuple[ContextPoint, ...]] = {}
        for start in range(0, len(queries), CONTEXT_QUERIES_PER_REQUEST):
            replies = await self._ask(
                subjects.api_telemetry_context(),
                queries[start : start + CONTEXT_QUERIES_PER_REQUEST],
                lambda chunk: ContextRequest(queries=chunk, points=CONTEXT_POINTS),
                ContextReply,
            )
            if replies is None:
                return out
            for reply in replies:
                for episode, points in reply.context.items():
                    pattern = patterns.get(episode, set())
                    out[episode] = tuple(
                        ContextPoint(p.ts, p.value, p.id, p.id in pattern, p.status) for p in points
                    )
        return out

    async def outages_for(
        self, alerts: Sequence[Alert], until: datetime, recent: int = 3
    ) -> dict[str, Outage]:
        """For availability violations: the target's failed probes since its last success up to
        ``until`` (a cleared one's up to its clear); {} without an API."""
        queries = [
            OutageQuery(
                episode_id=a.event.episode_id,
                provider=a.event.provider,
                model=a.event.model,
                target=a.event.target,
                since=since(a.event),
                until=a.cleared.ts if a.cleared is not None else until,
            )
            for a in alerts
            if is_outage(a.event)
        ]
        out: dict[str, Outage] = {}
        per_request = max(1, min(MAX_QUERIES, OUTAGE_PROBES_PER_REQUEST // max(recent, 1)))
        for start in range(0, len(queries), per_request):
            replies = await self._ask(
                subjects.api_telemetry_outages(),
                queries[start : start + per_request],
                lambda chunk: OutageRequest(queries=chunk, recent=recent),
                OutageReply,
            )
            if replies is None:
                return out
            for reply in replies:
                for episode, o in reply.outages.items():
                    out[episode] = Outage(
                        count=o.count,
                        since=o.since,
                        last_success=o.last_success,
                        recent=tuple(FailedProbe(p.ts, p.status, p.http_status, p.error) for p in o.recent),
                    )
        return out

    async def telemetry_points(self, events: Sequence[ViolationEvent]) -> list[TelemetryPoint]:
        """The probes that formed the violations' patterns; [] without an API."""
        ids = sorted({pid for ev in events for pid in ev.point_ids})
        out: list[TelemetryPoint] = []
        # In requests of POINTS_PER_REQUEST ids: a large incident's points in one reply passed
        # NATS's 1 MB max payload (about 7,000 probes), which the API could not send, and past
        # the request's 10,000 ids the API refused it: the analysis had no telemetry at all.
        for start in range(0, len(ids), POINTS_PER_REQUEST):
            replies = await self._ask(
                subjects.api_telemetry_points(),
                ids[start : start + POINTS_PER_REQUEST],
                lambda chunk: PointsRequest(ids=chunk),
                PointsReply,
            )
            if replies is None:
                return out
            out += (
                TelemetryPoint(
                    p.id, p.ts, p.model, p.latency_ms, p.ttft_ms, p.tokens_per_s, p.status, p.prompt_id
                )
                for reply in replies
                for p in reply.points
            )
        return out

    # -- pages again --------------------------------------------------------------------------

    async def tell_repaged(self, episodes: Sequence[RepagedEpisode]) -> bool:
        """Tell the API of violations paged again after a hand resolution, for it to reopen its
        copy of each (``llmscope.proto.repage``); True once an API answered ``ok``. A failure is
        logged as a warning once, then quietly until an API answers (an alerter without an API
        asks every few seconds while a page again is untold)."""
        if self._nc is None or not episodes:
            return False
        try:
            msg = await self._nc.request(
                subjects.api_violations_repaged(),
                msgspec.json.encode(RepagedRequest(episodes=tuple(episodes))),
                timeout=self._timeout,
            )
            reply = msgspec.json.decode(msg.data, type=RepagedReply)
            error = "" if reply.status == "ok" else reply.error or "error"
        except (NatsError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = repr(exc)
        if error:
            (log.debug if self._repage_failing else log.warning)(
                "the API was not told of violations paged again; telling it later", error=error
            )
            self._repage_failing = True
            return False
        self._repage_failing = False
        return True
