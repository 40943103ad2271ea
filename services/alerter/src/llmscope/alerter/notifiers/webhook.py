"""Generic webhooks: the body is a ``notification.v1`` event (schema in proto/schemas), signed.

Headers: ``X-LLMscope-Timestamp`` (unix seconds at sending), ``X-LLMscope-Signature``
(``sha256=`` + hex HMAC-SHA256 over ``<timestamp>.<body>`` with the shared secret) and
``X-LLMscope-Delivery`` (the notification id: the same id twice is the same message). Receivers
reject timestamps older than a few minutes against replay: see :func:`verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

import aiohttp

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.email import render_text
from llmscope.alerter.notifiers.http import post
from llmscope.config.env import Secret
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent

SIGNATURE_HEADER = "X-LLMscope-Signature"
TIMESTAMP_HEADER = "X-LLMscope-Timestamp"
DELIVERY_HEADER = "X-LLMscope-Delivery"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None, tolerance: float = 300
) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    try:
        ts = int(headers[TIMESTAMP_HEADER])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), headers.get(SIGNATURE_HEADER, ""))


def to_event(n: Notification) -> NotificationEvent:
    def ack(a: AlertView) -> bool:
        return a.acknowledged_by is not None

    return NotificationEvent(
        id=n.id,
        ts=n.created_at,
        reason=n.reason,
        status=n.status,
        route=n.route,
        group_key=n.group_key,
        group_labels=dict(n.group_labels),
        channel=n.channel,
        firing=tuple(a.event for a in n.firing),
        resolved=tuple(a.cleared or a.event for a in n.resolved),
        acknowledged=tuple(a.episode_id for a in n.firing if ack(a)),
        dashboard_url=n.public_url,
        title=n.title,
        text=render_text(n),
        incident_id=n.incident.id if n.incident else "",
        incident_url=n.incident_url() or "",
        cascade_models=n.incident.models if n.incident and n.cascade else (),
        merged_into=n.merged_into.id if n.merged_into else "",
        merged_into_url=n.merged_url() or "",
    )


class WebhookNotifier:
    """POSTs the signed JSON event to a URL."""

    kind = "webhook"

    def __init__(
        self,
        name: str,
        url: Secret,
        session: aiohttp.ClientSession,
        *,
        secret: Secret | None = None,
        send_resolved: bool = True,
        clock: Callable[[], float] = time.time,
        destinations: Destinations | None = None,
    ) -> None:
        self.name = name
        self._destinations = destinations
        self._url = url
        self._secret = secret or Secret("")
        self._session = session
        self._clock = clock
        self.send_resolved = send_resolved

    def build_payload(self, notification: Notification) -> tuple[str, bytes]:
        return notification.id, codec.encode(to_event(notification))

    async def send(self, payload: tuple[str, bytes]) -> str:
        delivery, body = payload
        ts = int(self._clock())  # signed at sending time, so a retry carries a fresh timestamp
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts), DELIVERY_HEADER: delivery}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret.get(), ts, body)
        status, text = await post(
            self._session, self._url.get(), data=body, headers=headers, destinations=self._destinations
        )
        return f"HTTP {status} {text.strip()[:100]}"
