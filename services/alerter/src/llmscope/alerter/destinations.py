"""Where notifications may go: the shared outbound policy (:mod:`llmscope.config.outbound`),
with refusals as permanent delivery errors.

Every address a destination resolves to must be public unless ``LLMSCOPE_ALERT_ALLOWED_HOSTS``
names it; the check runs before every send (test sends included) and again inside the
connection: HTTP channels connect through :func:`guarded_session`'s resolver, the email channel
to the address :meth:`Destinations.addresses` checked, so a name that resolves differently
between the check and the connection (DNS rebinding) reaches nothing. Redirects are never
followed (:mod:`llmscope.alerter.notifiers.http`).
"""

from __future__ import annotations

import aiohttp
from aiohttp.abc import ResolveResult

from llmscope.alerter.retry import DeliveryError
from llmscope.config.outbound import ALLOWED_HOSTS_ENV, DestinationRefused, GuardedResolver, OutboundPolicy

__all__ = ["ALLOWED_HOSTS_ENV", "DestinationRefused", "Destinations", "guarded_session"]


def refused(exc: DestinationRefused) -> DeliveryError:
    return DeliveryError(str(exc), retryable=False)


class Destinations(OutboundPolicy):
    """The outbound policy, raising a permanent :class:`DeliveryError` instead."""

    async def check(self, host: str, port: int | None = None) -> None:
        try:
            await super().check(host, port)
        except DestinationRefused as exc:
            raise refused(exc) from None

    async def addresses(self, host: str, port: int | None = None) -> list[ResolveResult] | None:
        """The checked addresses to connect to (None: the name does not resolve)."""
        try:
            return await self.resolve(host, port)
        except DestinationRefused as exc:
            raise refused(exc) from None


def guarded_session(policy: OutboundPolicy, **kwargs: object) -> aiohttp.ClientSession:
    """A client session whose connections go only where ``policy`` allows (see the module)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy))
    return aiohttp.ClientSession(connector=connector, **kwargs)  # type: ignore[arg-type]
