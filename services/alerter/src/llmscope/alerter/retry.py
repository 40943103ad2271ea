"""Delivery retries: exponential backoff with jitter until a deadline, every attempt recorded.

Channels raise :class:`DeliveryError` saying whether a failure is retryable: 5xx, 429 (its
Retry-After honoured up to the backoff cap ``max_delay``), timeouts, connection and SMTP transport
errors are; other 4xx, refused addresses and template errors are not. Capping Retry-After keeps
the longest wait between attempts (``max_delay`` plus jitter) known, so the claim's lease can be
checked against it at start (settings.py).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp

OutcomeStatus = Literal["sent", "failed", "expired"]
"""sent; failed: a permanent error; expired: retryable errors until the deadline."""


class DeliveryError(Exception):
    """A channel could not deliver; ``retryable`` says whether trying again may help."""

    def __init__(
        self, message: str, *, retryable: bool, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_http(status: int, headers: Mapping[str, str], body: str = "") -> DeliveryError | None:
    """None for 2xx; otherwise the error, retryable for 5xx, 408 and 429."""
    if 200 <= status < 300:
        return None
    detail = f"HTTP {status}: {body.strip()[:300]}" if body.strip() else f"HTTP {status}"
    if status == 429:
        return DeliveryError(
            detail, retryable=True, retry_after=parse_retry_after(headers.get("Retry-After")), status=status
        )
    retryable = status >= 500 or status == 408
    return DeliveryError(detail, retryable=retryable, status=status)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff ``initial * factor**(n-1)`` capped at ``max_delay``, +/- ``jitter``, until ``deadline``."""

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    deadline: float = 600.0
    jitter: float = 0.25
    attempt_timeout: float = 10.0

    @property
    def longest_sleep(self) -> float:
        """The longest wait between two attempts: the capped backoff with its jitter."""
        return self.max_delay * (1 + self.jitter)

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        base = min(self.max_delay, self.initial * self.factor ** max(0, attempt - 1))
        jittered = base * (1 - self.jitter + 2 * self.jitter * rng.random())
        if retry_after is None:
            return jittered
        # A server's Retry-After is a floor (asking sooner only earns another 429), but only up
        # to max_delay: an hour's Retry-After would otherwise outlive the deadline and the lease.
        return max(jittered, min(retry_after, self.max_delay))


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    at: datetime
    ok: bool
    detail: str
    retryable: bool = False
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: OutcomeStatus
    attempts: tuple[Attempt, ...]

    @property
    def detail(self) -> str:
        return self.attempts[-1].detail if self.attempts else ""


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def describe_error(exc: BaseException) -> str:
    """The exception's type and message with every URL cut out.

    Webhook URLs carry their credential in the path (Slack's token), and aiohttp's reprs name the
    request URL (``TooManyRedirects(RequestInfo(url=...))``); this text goes to logs, the
    notification log and the setup wizard's test-send reply.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        message = f"{exc.status} {exc.message}".strip()  # str() would add url=...; request_info too
    else:
        message = str(exc)
    message = _URL.sub("<url>", message)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def as_delivery_error(exc: BaseException) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeliveryError("timed out", retryable=True)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return DeliveryError(f"transport error: {describe_error(exc)}", retryable=True)
    return DeliveryError(f"unexpected error: {describe_error(exc)}", retryable=False)


async def send_with_retry(
    send: Callable[[], Awaitable[str]],
    *,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    monotonic: Callable[[], float] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_attempt: Callable[[Attempt], Awaitable[None]] | None = None,
    before_attempt: Callable[[], Awaitable[bool]] | None = None,
) -> Outcome:
    """Call ``send`` until it succeeds, fails permanently or the next try would pass the deadline.

    ``before_attempt`` returning False stops the loop (the lease on the notification was lost).
    """
    rng = rng or random.Random()
    clock = monotonic or asyncio.get_running_loop().time
    give_up = clock() + policy.deadline
    attempts: list[Attempt] = []
    number = 0
    while True:
        number += 1
        if before_attempt is not None and not await before_attempt():
            return Outcome("expired", tuple(attempts))
        retry_after: float | None = None
        try:
            async with asyncio.timeout(policy.attempt_timeout):
                detail = await send()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = as_delivery_error(exc)
            retry_after = err.retry_after
            attempt = Attempt(number, now(), False, str(err), err.retryable, err.status)
        else:
            attempt = Attempt(number, now(), True, detail)
        attempts.append(attempt)
        if on_attempt is not None:
            await on_attempt(attempt)
        if attempt.ok:
            return Outcome("sent", tuple(attempts))
        if not attempt.retryable:
            return Outcome("failed", tuple(attempts))
        delay = policy.delay(number, rng, retry_after)
        if clock() + delay > give_up:
            return Outcome("expired", tuple(attempts))
        await sleep(delay)
