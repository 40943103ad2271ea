"""The alerter works with no access to the API's tables (architecture rule: each service owns
its tables, others ask it over the bus).

The API runs on a database of its own, the alerter on another where none of the API's tables
exist: the channels the API's settings configure, the probes around a violation in its page, and
a person's hand resolution through the API ("RESOLVED by ...") all reach the alerter over NATS
only. Before the bus carried them, the alerter read the API's ``settings``, ``telemetry`` and
``violations`` tables, found none here, and sent nothing (no email channel, no resolution).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.js import JetStreamContext

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.settings import ApiSettings
from llmscope.bus.settings import BusSettings
from llmscope.config.env import Secret
from llmscope.proto import subjects
from tests.alerter.factories import Mailbox, smtp_server
from tests.alerter.harness import eventually, publish, start_alerter
from tests.api.conftest import API_KEY, LOOPBACK, serve
from tests.api.factories import telemetry, violation

API_TABLES = ("violations", "violation_clears", "settings", "telemetry", "telemetry_minute", "series")


@pytest.fixture
async def api_database_url(database_url: str) -> AsyncIterator[str]:
    """A second database on the same server: the API's own."""
    base, _, _ = database_url.rpartition("/")
    name = f"t_api_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_pages_context_settings_and_hand_resolution_reach_an_alerter_without_the_api_tables(
    database_url: str, api_database_url: str, nats_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    settings = ApiSettings(
        database_url=Secret(api_database_url),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=nats_url),
        port=0,
        spc_request_timeout_s=2.0,
        persister=False,
        alert_allowed_hosts=LOOPBACK,
    )
    async with serve(settings) as api:
        points = [telemetry(i) for i in range(40)]
        ev = violation(points[30], id="v-bus")
        async with api.store.pool.acquire() as conn:
            await store_telemetry(conn, points)
            await store_violations(conn, [ev])
        # The email channel exists only in the API's settings (none in the alerter's env).
        values = {
            "alert.email.enabled": True,
            "alert.email.recipients": ["ops@example.com"],
            "alert.email.smtp_host": "127.0.0.1",
            "alert.email.smtp_port": smtp.port,
            "alert.email.tls": "none",
        }
        for key, value in values.items():
            r = await api.client.put(f"/api/settings/{key}", json={"value": value})
            assert r.status_code == 200, r.text
        run = await start_alerter(database_url, js, {})
        try:
            tables = await run.pool.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename = ANY($1::text[])", list(API_TABLES)
            )
            assert tables == []  # nothing of the API's to read here
            await publish(js, ev)
            await eventually(lambda: len(box.messages) >= 1, what="the page, by the settings' email channel")
            assert box.envelopes[0] == ["ops@example.com"]
            body = box.messages[0].get_body(("plain",))
            assert body is not None
            text = body.get_content()
            # The probes around the violation, answered by the API from its telemetry table.
            table = [line for line in text.splitlines() if line.startswith("   ") and "+00:00" in line]
            assert len(table) == 20, text  # 10 before, the signalling point, 9 after
            assert sum(line.startswith("   *") for line in table) == 1
            r = await api.client.post(
                "/api/violations/v-bus/resolve", json={"resolved_by": "bo", "note": "a bad deploy"}
            )
            assert r.status_code == 200, r.text
            await eventually(lambda: len(box.messages) >= 2, what="the hand resolution's email")
            assert "RESOLVED by bo" in box.messages[1]["Subject"], box.messages[1]["Subject"]
            resolved = box.messages[1].get_body(("plain",))
            assert resolved is not None
            assert "a bad deploy" in resolved.get_content()
            assert (
                await run.pool.fetchval("SELECT resolved_by FROM alerter_alerts WHERE episode_id = 'v-bus'")
                == "bo"
            )
            # The API's outbox is empty: the action was stored in its stream.
            assert not await api.store.pool.fetchval(
                "SELECT action_pending FROM violations WHERE id = 'v-bus'"
            )
            kv = await js.key_value(subjects.SETTINGS_BUCKET)
            stored = await kv.get(subjects.kv_key("alert.email.smtp_port"))
            assert json.loads(stored.value or b"") == smtp.port
        finally:
            await run.close()
    smtp.stop()
