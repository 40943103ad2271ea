"""Where notifications may go: never to this host, the cloud's metadata service or the private
network, unless the operator names the destination in ``LLMSCOPE_ALERT_ALLOWED_HOSTS``.

Channel URLs and the SMTP host are set through the API by anyone holding the key; without this
check a Slack or webhook URL of ``http://169.254.169.254/...`` or ``http://10.0.0.5:6379`` turned
the alerter into a proxy into its own network (and the test send into a port scanner). Every
address a destination resolves to must be global (``ipaddress``'s ``is_global``: not loopback,
private, link-local, shared, reserved or multicast) unless an allow-list entry covers it: a host
name as written in the URL, an address, or a network (``127.0.0.1,10.0.0.0/8,hooks.internal``).
The check runs before every send (test sends included); redirects are never followed
(:mod:`llmscope.alerter.notifiers.http`). A name that resolves differently between this check and
the connection (DNS rebinding) is not covered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import ConfigError, Env

ALLOWED_HOSTS_ENV = "LLMSCOPE_ALERT_ALLOWED_HOSTS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _kind(address: IPAddress) -> str:
    address = getattr(address, "ipv4_mapped", None) or address
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private:
        return "private"
    if address.is_multicast:
        return "multicast"
    return "non-public"


class Destinations:
    """The allow-list, and the check of one host against it."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._names: set[str] = set()
        self._networks: list[IPNetwork] = []
        for entry in allowed:
            entry = entry.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry)

    @classmethod
    def from_env(cls, env: Env) -> Destinations:
        try:
            return cls(env.items(ALLOWED_HOSTS_ENV))
        except ValueError as exc:  # pragma: no cover - items() only splits
            raise ConfigError(f"{ALLOWED_HOSTS_ENV}: {exc}") from exc

    def _allowed(self, address: IPAddress) -> bool:
        if address.is_global and not address.is_multicast:
            return True
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = [address] if mapped is None else [address, mapped]
        return any(a in net for a in candidates for net in self._networks if a.version == net.version)

    async def check(self, host: str, port: int | None = None) -> None:
        """Raise a permanent :class:`DeliveryError` when ``host`` may not be sent to."""
        name = host.strip().lower().strip("[]")
        if not name or name in self._names:
            return
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(name)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(name, port or 0, type=socket.SOCK_STREAM)
            except OSError:
                return  # unresolvable: the send itself fails, with a transport error
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for address in addresses:
            if not self._allowed(address):
                raise DeliveryError(
                    f"destination not allowed: {name} is a {_kind(address)} address "
                    f"(name it in {ALLOWED_HOSTS_ENV} to allow it)",
                    retryable=False,
                )

    async def check_url(self, url: str) -> None:
        """:meth:`check` of a URL's host (the URL itself is never named: it may hold a token)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return  # malformed: aiohttp refuses it as an invalid URL
        await self.check(parts.hostname or "", port)
