"""Publishing violations and closed traffic minutes (acked by JetStream before a batch is)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.service_core import ServiceCore

log = get_logger("llmscope.spc_engine")


CATCH_UP_SLACK_S = 2.0
"""A quiet partition's minutes close by the wall clock this long behind it: a message stored a
moment ago may not have been delivered yet."""


class Publishing(ServiceCore):
    """Violations and traffic minutes out to JetStream, each acknowledged before returning."""

    async def publish_minutes(self, minutes: Sequence[TrafficMinuteEvent]) -> None:
        if minutes:
            await self._publisher.publish_many(
                [(subjects.traffic_minute(m.provider, m.model), m) for m in minutes]
            )

    async def close_quiet_minutes(self) -> None:
        """Close the minutes of caught-up partitions by the wall clock, and publish them."""
        now = datetime.fromtimestamp(time.time() - CATCH_UP_SLACK_S, UTC)
        for partition, traffic in list(self.traffic.items()):
            if partition not in self.held or not self._caught_up.get(partition, False):
                continue
            self._leases[partition].check()
            minutes, violations = traffic.advance(now)
            await self.publish_minutes(minutes)
            await self.publish(violations)

    async def publish(self, events: Sequence[ViolationEvent]) -> None:
        """Publish pipelined and return when JetStream acknowledged every one."""
        if not events:
            return
        await self._publisher.publish_many(
            [(subjects.violations(v.provider, v.model, v.rule), v) for v in events]
        )
        self.published += len(events)
        for v in events:
            self.metrics.violations.labels(v.rule, v.severity, v.state).inc()
