"""A token bucket per client address for failed authentications (issue 9: 300 wrong keys, no 429).

Each client starts with ``burst`` tokens; each failure takes one, and tokens come back at
``burst / window_s`` per second. With none left, the client's next attempt is refused before
its key is even compared, with the seconds until a token is back. Successes cost nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class FailureLimiter:
    """Failed authentications per client; ``burst`` 0 turns the limit off."""

    def __init__(
        self,
        burst: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.burst = burst
        self.rate = burst / window_s if window_s > 0 else math.inf
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + max(now - at, 0.0) * self.rate)

    def retry_after(self, client: str) -> int | None:
        """Seconds until this client may try again, or None when it may now."""
        if self.burst <= 0:
            return None
        tokens = self._tokens(client, self.clock())
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) / self.rate))

    def fail(self, client: str) -> None:
        """Take a token for one failed authentication."""
        if self.burst <= 0:
            return
        now = self.clock()
        self._buckets[client] = (max(self._tokens(client, now) - 1, 0.0), now)
        if len(self._buckets) > self.max_clients:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # Full buckets say nothing: drop them; if a flood of addresses keeps the table too big,
        # the oldest go first (an attacker with that many addresses is past a per-IP limit).
        for client in [c for c in self._buckets if self._tokens(c, now) >= self.burst]:
            del self._buckets[client]
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]
