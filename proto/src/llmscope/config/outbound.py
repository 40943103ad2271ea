"""Where LLMscope may connect to on a user's say-so: never this host, the cloud's metadata
service or the private network, unless the operator names the destination in
``LLMSCOPE_ALERT_ALLOWED_HOSTS``.

Channel URLs and the SMTP host are set through the API by anyone holding the key; without this
check a Slack or webhook URL of ``http://169.254.169.254/...`` or ``http://10.0.0.5:6379`` turned
the alerter into a proxy into its own network (and the test send into a port scanner). Every
address a destination resolves to must be global (``ipaddress``'s ``is_global``: not loopback,
private, link-local, shared, reserved or multicast) unless an allow-list entry covers it: a host
name as written, an address, or a network (``127.0.0.1,10.0.0.0/8,hooks.internal``).

The API checks when a destination is saved (:meth:`OutboundPolicy.check_url`, a 422 naming the
setting) and the alerter before every send. A name is resolved once per connection and the
connection goes to the address that was checked, so a name that answers with a public address
for the check and a private one for the connection (DNS rebinding) gets nowhere: HTTP through
:class:`GuardedResolver`, the resolver of the alerter's aiohttp connector (aiohttp connects to
what its resolver returned, with the URL's host as ``Host`` and TLS server name, and follows no
redirect we ask it not to), SMTP through :meth:`OutboundPolicy.resolve`, whose checked address
the email channel connects to itself. The resolver is injectable (``resolver=``), for tests and
for deployments with a resolver of their own.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Self
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from llmscope.config.env import ConfigError, Env

ALLOWED_HOSTS_ENV = "LLMSCOPE_ALERT_ALLOWED_HOSTS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationRefused(ValueError):
    """A destination that resolves to an address the policy does not allow."""


def address_kind(address: IPAddress) -> str:
    """What kind of non-public address this is, in words."""
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


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") goes


class OutboundPolicy:
    """The allow-list, and the check of a host (resolved once) against it."""

    def __init__(self, allowed: Iterable[str] = (), *, resolver: AbstractResolver | None = None) -> None:
        self._names: set[str] = set()
        self._networks: list[IPNetwork] = []
        self._resolver = resolver
        for entry in allowed:
            entry = entry.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry)

    @classmethod
    def from_env(cls, env: Env, *, resolver: AbstractResolver | None = None) -> Self:
        try:
            return cls(env.items(ALLOWED_HOSTS_ENV), resolver=resolver)
        except ValueError as exc:  # pragma: no cover - items() only splits
            raise ConfigError(f"{ALLOWED_HOSTS_ENV}: {exc}") from exc

    def also_allowing(self, *names: str) -> Self:
        """The same policy with ``names`` (host names or addresses) allowed too."""
        wider = type(self)((), resolver=self._resolver)
        wider._names = self._names | {n.strip().lower().strip("[]") for n in names if n}
        wider._networks = list(self._networks)
        return wider

    @property
    def resolver(self) -> AbstractResolver:
        if self._resolver is None:
            self._resolver = ThreadedResolver()  # needs a running loop: made on first use
        return self._resolver

    def allows_name(self, host: str) -> bool:
        return host.strip().lower().strip("[]").rstrip(".") in self._names

    def allows(self, address: IPAddress) -> bool:
        if address.is_global and not address.is_multicast:
            return True
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = [address] if mapped is None else [address, mapped]
        return any(a in net for a in candidates for net in self._networks if a.version == net.version)

    def refusal(self, name: str, address: IPAddress) -> DestinationRefused:
        return DestinationRefused(
            f"destination not allowed: {name} is a {address_kind(address)} address "
            f"(name it in {ALLOWED_HOSTS_ENV} to allow it)"
        )

    def checked(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        """``results`` of resolving ``host`` when every address is allowed; raises otherwise."""
        if self.allows_name(host):
            return results
        for result in results:
            address = _address(result["host"])
            if not self.allows(address):
                raise self.refusal(host.strip().lower().strip("[]"), address)
        return results

    async def resolve(self, host: str, port: int | None = None) -> list[ResolveResult] | None:
        """The checked addresses of ``host`` (connect to these, not to the name); None when the
        name does not resolve (the connection fails by itself). Raises DestinationRefused."""
        name = host.strip().lower().strip("[]")
        if not name:
            return None
        try:
            address = _address(name)
        except ValueError:
            try:
                results = await self.resolver.resolve(name, port or 0, family=socket.AF_UNSPEC)
            except OSError:
                return None
            except UnicodeError:
                # IDNA cannot encode it (a label over 63 characters, a character no host name
                # has): no DNS could ever answer, so it is refused now rather than at every send
                # (it escaped as a 500 from PUT /api/settings: schemathesis, issue 9).
                raise DestinationRefused("not a host name: IDNA cannot encode it") from None
            return self.checked(name, results)
        if not self.allows_name(name) and not self.allows(address):
            raise self.refusal(name, address)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return [
            {
                "hostname": name,
                "host": str(address),
                "port": port or 0,
                "family": family,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def check(self, host: str, port: int | None = None) -> None:
        """Raise :class:`DestinationRefused` when ``host`` may not be connected to."""
        await self.resolve(host, port)

    async def check_url(self, url: str) -> None:
        """:meth:`check` of a URL's host (the URL itself is never named: it may hold a token)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return  # malformed: the HTTP client refuses it as an invalid URL
        await self.check(parts.hostname or "", port)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that hands the connector only addresses the policy allows.

    aiohttp connects to exactly what its resolver returns, so the address checked is the
    address connected to: no second lookup for a rebinding name to answer differently. (An
    address literal in a URL never reaches a resolver: :meth:`OutboundPolicy.check_url` covers
    those before the request.)"""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._policy.resolver.resolve(host, port, family=family)
        return self._policy.checked(host, results)

    async def close(self) -> None:
        await self._policy.resolver.close()
