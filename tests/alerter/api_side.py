"""The API's side of what the alerter learns over the bus, for alerter tests: its settings in
their KV bucket, its telemetry answered by the API's own responder (from whichever database the
test gives it), and people's actions on violations as the API publishes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nats.js import JetStreamContext

from llmscope.api.telemetry_context import TelemetryContext
from llmscope.bus.kv import open_bucket
from llmscope.bus.publisher import Publisher
from llmscope.proto import subjects
from llmscope.proto.base import utcnow
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationAction, ViolationActionEvent, action_id


@dataclass
class ApiSide:
    js: JetStreamContext
    pool: asyncpg.Pool | None
    responder: TelemetryContext | None

    async def put_settings(self, values: Mapping[str, str]) -> None:
        """Settings as the API mirrors them: key -> the value's JSON text."""
        kv = await open_bucket(self.js, subjects.SETTINGS_BUCKET, description="LLMscope settings")
        for key, text in values.items():
            await kv.put(subjects.kv_key(key), text.encode())

    async def delete_setting(self, key: str) -> None:
        kv = await open_bucket(self.js, subjects.SETTINGS_BUCKET, description="LLMscope settings")
        # nats-py's delete writes a marker; no key to delete is no error here.
        await kv.delete(subjects.kv_key(key))

    async def act(
        self,
        ev: ViolationEvent,
        action: ViolationAction,
        by: str,
        note: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Publish what a person did through the API to the episode of ``ev``."""
        when = at or utcnow()
        event = ViolationActionEvent(
            id=action_id(ev.episode_id, action, note),
            ts=when,
            action=action,
            violation_id=ev.episode_id,
            episode_id=ev.episode_id,
            provider=ev.provider,
            model=ev.model,
            acknowledged_by=by,
            acknowledged_at=when,
            resolved_by=by if action == "resolved" else None,
            resolved_at=when if action == "resolved" else None,
            note=note,
        )
        await Publisher(self.js).publish(subjects.violation_actions(ev.provider, action), event)

    async def publish_action(self, event: ViolationActionEvent) -> None:
        """Publish an action event as given (an older one again, one of an older API...)."""
        await Publisher(self.js).publish(subjects.violation_actions(event.provider, event.action), event)

    async def close(self) -> None:
        if self.responder is not None:
            await self.responder.stop()
        if self.pool is not None:
            await self.pool.close()


async def api_side(js: JetStreamContext, database_url: str | None = None) -> ApiSide:
    """The API's side; with ``database_url``, answering telemetry requests from that database's
    ``telemetry`` table (the test creates it)."""
    if database_url is None:
        return ApiSide(js, None, None)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    responder = TelemetryContext(lambda: pool)
    await responder.start(js._nc)
    await js._nc.flush()
    return ApiSide(js, pool, responder)
