"""Starting a service: wait for what it needs (NATS, Postgres), yet stop at once when asked.

Services start in any order (compose, Kubernetes), so a dependency that does not answer yet is
waited for, with a log line per attempt, instead of crashing the service. SIGINT and SIGTERM set
one ``stop`` event; everything a service awaits before it is up goes through
:func:`unless_stopped`, so a signal during that wait ends the service at once (exit 0, as after a
signal while running) instead of being noticed only once the dependency answers.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from llmscope.config.logs import BoundLogger, get_logger

T = TypeVar("T")

log = get_logger("llmscope.startup")

# What "the server is not there (yet)" looks like: refused, unreachable, timed out, reset.
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError)

# Postgres answering "not now": starting up or shutting down (57P03), too many connections
# (53300). By SQLSTATE, so this package needs no database driver.
POSTGRES_NOT_READY = frozenset({"57P03", "53300"})

# Postgres failing for reasons that have nothing to do with the data sent, by SQLSTATE class or
# code: connection exceptions (08), insufficient resources (53: too many connections, disk full),
# operator intervention (57: shutting down, starting up; not 57014, a cancelled or timed-out
# statement, which may be the batch's own doing), system errors (58), serialization failures
# and deadlocks (40), and a read-only transaction (25006: a failover in progress).
_POSTGRES_TRANSIENT_CLASSES = ("08", "53", "57", "58", "40")
_POSTGRES_PERMANENT = frozenset({"57014"})
_POSTGRES_TRANSIENT = frozenset({"25006"})


def postgres_unavailable(exc: BaseException) -> bool:
    """Postgres cannot be reached or cannot take the work just now: wait and try the same work
    again, nothing is wrong with it. False for data errors (a value out of range, a NUL in a
    string), constraint violations and bugs, which no amount of waiting fixes.

    By SQLSTATE and the driver's class name, so this package needs no database driver; asyncpg's
    plain ``InterfaceError`` is a closed connection or a closing pool, while its subclasses
    (``DataError``: an argument the column type cannot hold) are the data's fault.
    """
    if isinstance(exc, UNREACHABLE):
        return True
    kind = type(exc)
    if kind.__name__ == "InterfaceError" and kind.__module__.startswith("asyncpg"):
        return True
    state = getattr(exc, "sqlstate", None)
    if not isinstance(state, str):
        return False
    if state in _POSTGRES_PERMANENT:
        return False
    return state in _POSTGRES_TRANSIENT or state[:2] in _POSTGRES_TRANSIENT_CLASSES


def log_failure(logger: BoundLogger, what: str, **kw: Any) -> None:
    """Log the exception being handled by a loop that will try again: a traceback when it is a
    bug, one warning line when it is only PostgreSQL being away (:func:`postgres_unavailable`).

    An outage's traceback is the same every round, and each loop printed it each round: in the
    second and a half after PostgreSQL was killed under ``llmscope up`` its services wrote 300 to
    600 lines of them, burying the supervisor's one line saying it restarts the server.
    """
    exc = sys.exc_info()[1]
    if exc is not None and postgres_unavailable(exc):
        logger.warning(f"{what}; PostgreSQL unavailable, tried again", error=repr(exc), **kw)
    else:
        logger.exception(what, **kw)


class Stopped(Exception):
    """The service was asked to stop before it was up."""


class Unusable(Exception):
    """A dependency answered but refused us (bad password, no such database): retrying won't help."""


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT and SIGTERM (from the running loop's thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event | None) -> T:
    """Await ``awaitable``; if ``stop`` is set first, cancel it and raise :class:`Stopped`."""
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    if stop is None:
        return await task
    stopping = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {task, stopping}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    # Let the cancelled attempt unwind (close its socket) before the caller moves on.
    await asyncio.gather(task, return_exceptions=True)
    raise Stopped


def address(url: str) -> str:
    """``host:port/path`` of a server URL: what to name in a message, never its credentials."""
    parsed = urlsplit(url)
    host = parsed.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port
    except ValueError:  # a malformed port: say so rather than fail while reporting
        port = None
    where = f"{host}:{port}" if port else host
    return f"{where}{parsed.path}" if parsed.path not in ("", "/") else where


async def until_reachable(
    open_: Callable[[], Awaitable[T]],
    *,
    what: str,
    url: str,
    stop: asyncio.Event | None,
    not_ready: frozenset[str] = frozenset(),
    first_delay: float = 1.0,
    max_delay: float = 10.0,
) -> T:
    """Call ``open_`` until it succeeds, logging each failed attempt; :class:`Stopped` on ``stop``.

    :data:`UNREACHABLE` errors, and errors whose ``sqlstate`` is in ``not_ready``, are retried
    (doubling the delay up to ``max_delay``); any other error means the server answered and
    refused, and becomes :class:`Unusable` naming ``what`` at ``address(url)``, without the
    credentials ``url`` may hold.
    """
    where = address(url)
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return await unless_stopped(open_(), stop)
        except Stopped:
            raise
        except Exception as exc:
            if not isinstance(exc, UNREACHABLE) and getattr(exc, "sqlstate", None) not in not_ready:
                raise Unusable(f"cannot use {what} at {where}: {_describe(exc)}") from exc
            log.warning(
                f"cannot reach {what}; retrying",
                address=where,
                attempt=attempt,
                retry_in_s=delay,
                error=_describe(exc),
            )
        await unless_stopped(asyncio.sleep(delay), stop)
        delay = min(delay * 2, max_delay)


async def wait_for_postgres(open_: Callable[[], Awaitable[T]], *, dsn: str, stop: asyncio.Event | None) -> T:
    """:func:`until_reachable` for a Postgres pool or connection opened by ``open_`` on ``dsn``."""
    return await until_reachable(open_, what="Postgres", url=dsn, stop=stop, not_ready=POSTGRES_NOT_READY)


def _describe(exc: BaseException) -> str:
    # One line: the error's first line (OSError's names the address tried, never the DSN).
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
