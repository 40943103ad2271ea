"""A local stand-in for Prometheus Alertmanager's ``POST /api/v2/alerts``.

Every request is checked against the v2 OpenAPI spec's ``postableAlerts`` (api/v2/openapi.yaml:
an array of objects with ``labels``, a labelSet, required; ``annotations``, a labelSet;
``startsAt`` and ``endsAt``, date-times; ``generatorURL``, a URI) and against what Alertmanager
validates after decoding (``types.Alert.Validate``: at least one label, valid label names, an end
not before the start). Two checks are ours, stricter than the spec: no unknown keys (a typo would
silently be dropped) and an ``alertname`` label (every Alertmanager route and template expects
one). A valid request is answered 200 with an empty body and applied to a small alert store
keyed by the label set, as Alertmanager does (a firing alert without ``endsAt`` expires after
``resolve_timeout``); an invalid one 400 with the reasons, as Alertmanager answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tests.alerter.factories import HttpSink

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
POSTABLE_KEYS = frozenset({"labels", "annotations", "startsAt", "endsAt", "generatorURL"})


def _date_time(value: object, where: str, errors: list[str]) -> datetime | None:
    """RFC 3339 ``date-time`` (strfmt.DateTime): a full date, time and offset."""
    if not isinstance(value, str):
        errors.append(f"{where}: not a string")
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors.append(f"{where}: {value!r} is not an RFC 3339 date-time")
        return None
    if ts.tzinfo is None or "T" not in value:
        errors.append(f"{where}: {value!r} lacks a time or an offset")
        return None
    return ts


def _label_set(value: object, where: str, errors: list[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        errors.append(f"{where}: not an object")
        return {}
    for k, v in value.items():
        if not LABEL_NAME.match(k):
            errors.append(f"{where}: invalid label name {k!r}")
        if not isinstance(v, str):
            errors.append(f"{where}.{k}: value is not a string")
    return value


def validate_postable_alerts(body: object) -> list[str]:
    """The reasons a body is not a valid ``postableAlerts``; empty when it is."""
    errors: list[str] = []
    if not isinstance(body, list):
        return ["body: not an array (postableAlerts)"]
    for i, alert in enumerate(body):
        where = f"[{i}]"
        if not isinstance(alert, dict):
            errors.append(f"{where}: not an object")
            continue
        if unknown := set(alert) - POSTABLE_KEYS:
            errors.append(f"{where}: unknown keys {sorted(unknown)}")
        if "labels" not in alert:
            errors.append(f"{where}.labels: required")
        labels = _label_set(alert.get("labels", {}), f"{where}.labels", errors)
        if "labels" in alert and not labels:
            errors.append(f"{where}.labels: at least one label pair required")
        if labels and "alertname" not in labels:
            errors.append(f"{where}.labels: no alertname")
        if "annotations" in alert:
            _label_set(alert["annotations"], f"{where}.annotations", errors)
        starts = _date_time(alert["startsAt"], f"{where}.startsAt", errors) if "startsAt" in alert else None
        ends = _date_time(alert["endsAt"], f"{where}.endsAt", errors) if "endsAt" in alert else None
        if starts and ends and ends < starts:
            errors.append(f"{where}: start time must be before end time")
        if "generatorURL" in alert:
            url = alert["generatorURL"]
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or not (parts.scheme and parts.netloc):
                errors.append(f"{where}.generatorURL: {url!r} is not a URI")
    return errors


@dataclass
class AmAlert:
    labels: dict[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    posts: int = 0


@dataclass
class FakeAlertmanager:
    """``HttpSink`` answering as Alertmanager's v2 alerts endpoint; ``alerts`` keyed by label set."""

    resolve_timeout: timedelta = timedelta(minutes=5)
    alerts: dict[tuple[tuple[str, str], ...], AmAlert] = field(default_factory=dict)
    posts: list[list[dict[str, Any]]] = field(default_factory=list)
    rejected: list[list[str]] = field(default_factory=list)
    sink: HttpSink = field(init=False)

    def __post_init__(self) -> None:
        self.sink = HttpSink(self._answer)

    async def _answer(self, request: web.Request, _: int) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/api/v2/alerts":
            return web.Response(status=404, text="not found")
        if request.content_type != "application/json":
            return web.Response(status=400, text="content type must be application/json")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="body is not JSON")
        errors = validate_postable_alerts(body)
        if errors:
            self.rejected.append(errors)
            return web.Response(status=400, text="; ".join(errors))
        self.posts.append(body)
        for a in body:
            key = tuple(sorted(a["labels"].items()))
            ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")) if "endsAt" in a else None
            starts = datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")) if "startsAt" in a else None
            kept = self.alerts.setdefault(key, AmAlert(a["labels"], starts, ends))
            kept.ends_at = ends  # without endsAt: open until resolve_timeout after this post
            kept.posts += 1
        return web.Response(status=200)

    async def start(self) -> str:
        return await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()
