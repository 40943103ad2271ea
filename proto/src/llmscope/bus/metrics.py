"""What every JetStream consumer reports, under the same names in every service's registry.

Consumer lag is the server's own count (``num_pending``: stored, matching the filter, not yet
delivered; ``num_ack_pending``: delivered, not yet acknowledged), read from the consumer's info
every few seconds by :func:`sample_consumers` rather than counted per message: it costs one
request per consumer and period, and it is right even for messages another replica took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from llmscope.config.logs import get_logger

log = get_logger("llmscope.bus.metrics")


class ConsumerMetrics:
    """Lag and dead letters of a service's durable consumers, labelled by consumer name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "llmscope_consumer_pending_messages",
            "Messages stored for the consumer and not yet delivered (its lag), sampled",
            ["consumer"],
            registry=registry,
        )
        self.ack_pending = Gauge(
            "llmscope_consumer_ack_pending_messages",
            "Messages delivered to the consumer and not yet acknowledged, sampled",
            ["consumer"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "llmscope_dead_letters",
            "Messages this process dead-lettered (undecodable, rejected, or failing every try)",
            ["consumer"],
            registry=registry,
        )

    async def sample(self, js: JetStreamContext, stream: str, durable: str) -> None:
        """Read one consumer's counts from the server (raises what the request raises)."""
        info = await js.consumer_info(stream, durable)
        self.pending.labels(durable).set(info.num_pending or 0)
        self.ack_pending.labels(durable).set(info.num_ack_pending or 0)

    def forget(self, durable: str) -> None:
        """Drop a consumer's lag series (it moved to another replica, or was deleted)."""
        for gauge in (self.pending, self.ack_pending):
            with contextlib.suppress(KeyError):
                gauge.remove(durable)


async def sample_consumers(
    metrics: ConsumerMetrics,
    js: JetStreamContext,
    stream: str,
    durables: Callable[[], Collection[str]],
    stop: asyncio.Event,
    every: float,
) -> None:
    """Sample the lag of ``durables()`` (asked anew each period) every ``every`` s until ``stop``.

    A consumer that does not exist (yet) or a request that fails leaves the last value; the
    series of a consumer no longer listed is dropped.
    """
    known: set[str] = set()
    while not stop.is_set():
        current = set(durables())
        for gone in known - current:
            metrics.forget(gone)
        known = current
        # All at once: one request after another woke nats-server a dozen times each.
        durables_now = sorted(current)
        results = await asyncio.gather(
            *(metrics.sample(js, stream, durable) for durable in durables_now), return_exceptions=True
        )
        for durable, result in zip(durables_now, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, NotFoundError):
                # NATS away: the gauge keeps its last value until it is back.
                log.debug("consumer lag not sampled", consumer=durable, error=repr(result))
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
