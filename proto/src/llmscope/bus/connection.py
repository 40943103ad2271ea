"""Connecting to NATS: wait for the server at start, then reconnect forever after drops.

Services start in any order (compose, Kubernetes), so a first connection that fails is retried
instead of crashing the service; ``give_up_after`` bounds that wait when a caller
(a CLI command, a test) would rather fail fast, and ``stop`` (the service's SIGINT/SIGTERM event)
ends it at once with :class:`~llmscope.config.startup.Stopped`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote, urlsplit

from nats.aio.client import Client as NATS
from nats.errors import NoServersError
from nats.protocol.parser import PERMISSIONS_ERR

from llmscope.config.env import redact_url
from llmscope.config.logs import get_logger
from llmscope.config.startup import unless_stopped
from llmscope.proto.permissions import inbox_prefix

log = get_logger("llmscope.bus")


async def connect(
    url: str,
    name: str,
    *,
    connect_timeout: float = 5.0,
    give_up_after: float | None = None,
    stop: asyncio.Event | None = None,
) -> NATS:
    """Connect, retrying until the server answers (or ``give_up_after`` seconds pass, or ``stop``)."""
    nc = NATS()
    # One warning per outage: nats-py calls error_cb on every failed retry, once a second.
    warned = False

    async def on_disconnect() -> None:
        # nats-py marks the client closed before this callback when we close or drain it
        # ourselves (a normal stop): that is no outage worth a warning.
        if nc.is_closed:
            log.info("NATS connection closed", client=name)
        else:
            log.warning("disconnected from NATS", client=name)

    async def on_reconnect() -> None:
        nonlocal warned
        warned = False
        log.info("reconnected to NATS", client=name)

    refused: set[str] = set()

    async def on_error(exc: Exception) -> None:
        nonlocal warned
        if PERMISSIONS_ERR in str(exc).lower():
            # The server refused one subject to this user (llmscope.proto.permissions): not an
            # outage, nothing is retried, and the connection stays. Once per subject, as an error:
            # a user's allow list is missing something this client needs.
            if len(refused) < 100 and str(exc) not in refused:
                refused.add(str(exc))
                log.error("NATS refused a subject to this user", client=name, error=str(exc))
            return
        if warned:
            log.debug("NATS error", client=name, error=repr(exc))
            return
        warned = True
        log.warning("NATS error; retrying every second", client=name, url=redact_url(url), error=repr(exc))

    servers = [u.strip() for u in url.split(",")]
    # With max_reconnect_attempts=-1 nats-py itself retries the first connection forever.
    pending = nc.connect(
        servers=servers,
        inbox_prefix=_inbox_prefix(servers),
        name=name,
        connect_timeout=connect_timeout,  # type: ignore[arg-type]  # typed int, used as a float
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    try:
        await unless_stopped(asyncio.wait_for(pending, give_up_after), stop)
    except TimeoutError:
        raise NoServersError(f"no NATS server answered at {url} within {give_up_after:.0f} s") from None
    return nc


async def subscriptions_in_place(nc: NATS) -> None:
    """Return once the server holds every subscription made so far on ``nc``.

    One ``flush()`` is not enough with nats-py 2.x: its PING is written to the socket at once,
    while SUB commands wait in the client's pending buffer for the flusher task, so the PONG can
    come back before the server has seen the SUBs (a request sent then got "no responders" in
    about 4 % of tries here). The first round trip lets the flusher write the buffer; the
    second PING then travels behind the SUBs.
    """
    await nc.flush()
    await nc.flush()


def _inbox_prefix(servers: list[str]) -> str:
    """``_INBOX.<user>`` for a URL with a user and password (see llmscope.proto.permissions),
    else ``_INBOX``: a user allowed only its own replies can read no one else's. A token alone
    (``nats://TOKEN@host``) is a secret and never goes into a subject."""
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.username and parts.password is not None:
            return inbox_prefix(unquote(parts.username))
    return "_INBOX"
