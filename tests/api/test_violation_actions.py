"""What the API tells the alerter over the bus instead of letting it read its tables: people's
actions on violations (``violation_action.v1``, from an outbox in the violations table) and the
settings (mirrored into their KV bucket)."""

from __future__ import annotations

import json

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from llmscope.api.db import create_pool
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.violation_actions import ViolationActions
from llmscope.proto import codec, subjects
from llmscope.proto.violation_action import ViolationActionEvent, action_id
from tests.alerter.harness import eventually
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation


async def actions(js: JetStreamContext) -> list[tuple[str, ViolationActionEvent]]:
    """Every stored action with its subject, in stream order."""
    total = (await js.stream_info(subjects.STREAM_VIOLATION_ACTIONS)).state.messages
    out = []
    for seq in range(1, total + 1):
        msg = await js.get_msg(subjects.STREAM_VIOLATION_ACTIONS, seq)
        out.append((msg.subject or "", codec.decode_as(msg.data or b"", ViolationActionEvent)))
    return out


async def _seed(api: Api) -> None:
    points = [telemetry(i) for i in range(5)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
        await store_violations(conn, [violation(points[3], id="v1")])


async def pending(api: Api) -> bool:
    return bool(await api.store.pool.fetchval("SELECT action_pending FROM violations WHERE id = 'v1'"))


async def test_acknowledging_and_resolving_publish_the_episodes_state(api: Api, js: JetStreamContext) -> None:
    await _seed(api)
    r = await api.client.post(
        "/api/violations/v1/acknowledge", json={"acknowledged_by": "ana", "note": "on it"}
    )
    assert r.status_code == 200
    [(subject, ack)] = await actions(js)
    assert subject == subjects.violation_actions("ollama", "acknowledged")
    assert (ack.id, ack.action, ack.episode_id, ack.acknowledged_by, ack.note, ack.seq) == (
        action_id("v1", "acknowledged", "on it", 1),
        "acknowledged",
        "v1",
        "ana",
        "on it",
        1,
    )
    assert ack.resolved_at is None
    r = await api.client.post("/api/violations/v1/resolve", json={"resolved_by": "bo"})
    assert r.status_code == 200
    [_, (subject, res)] = await actions(js)
    assert subject == subjects.violation_actions("ollama", "resolved")
    # The whole human state: the first acknowledgement is kept, the note too.
    assert (res.action, res.resolved_by, res.acknowledged_by, res.note, res.seq) == (
        "resolved",
        "bo",
        "ana",
        "on it",
        2,
    )
    assert res.resolved_at is not None
    assert not await pending(api)
    # Resolving again changes nothing the API keeps: its event is a duplicate the stream drops.
    await api.client.post("/api/violations/v1/resolve", json={"resolved_by": "cy"})
    assert len(await actions(js)) == 2
    # A new note changes what the API keeps: a new event, not a duplicate (with an id of the
    # episode and action alone the stream dropped it, and the alerter kept the old note).
    r = await api.client.post("/api/violations/v1/resolve", json={"resolved_by": "cy", "note": "fixed"})
    assert r.status_code == 200
    [_, _, (_, renoted)] = await actions(js)
    assert (renoted.action, renoted.resolved_by, renoted.note, renoted.seq) == ("resolved", "bo", "fixed", 3)
    # Dated when the note was written, not at the first resolution (kept): the alerter shows an
    # incident's latest note by this time.
    assert renoted.resolved_at == res.resolved_at
    assert renoted.ts > res.ts >= ack.ts
    assert not await pending(api)
    # The note changed back is a new state too (by a digest of the note it was the first's id).
    await api.client.post("/api/violations/v1/acknowledge", json={"acknowledged_by": "dee", "note": "on it"})
    [*_, (_, back)] = await actions(js)
    assert (back.note, back.seq, back.resolved_by) == ("on it", 4, "bo")
    assert len(await actions(js)) == 4


async def test_an_action_taken_while_nats_is_away_is_published_later(api: Api, js: JetStreamContext) -> None:
    await _seed(api)
    outbox = api.runtime.actions
    outbox.attach(None)  # as while NATS is unreachable: the request still succeeds
    r = await api.client.post("/api/violations/v1/resolve", json={"resolved_by": "bo", "note": "deploy"})
    assert r.status_code == 200
    assert await pending(api)
    assert await actions(js) == []
    outbox.attach(api.runtime.publisher)
    # (The API's own loop does the same every few seconds; whichever comes first publishes it.)
    await outbox.publish_pending()
    [(_, ev)] = await actions(js)
    assert (ev.action, ev.resolved_by, ev.note) == ("resolved", "bo", "deploy")
    assert not await pending(api)
    assert await outbox.publish_pending() == 0


async def test_the_settings_are_mirrored_into_their_bucket(api: Api, js: JetStreamContext) -> None:
    r = await api.client.put("/api/settings/alert.email.smtp_port", json={"value": 2525})
    assert r.status_code == 200, r.text
    kv = await js.key_value(subjects.SETTINGS_BUCKET)
    key = subjects.kv_key("alert.email.smtp_port")
    assert json.loads((await kv.get(key)).value or b"") == 2525
    # A row written behind the API's back (or while NATS was away) reaches the bucket at the
    # next sync; a row removed leaves it.
    await api.store.pool.execute(
        "INSERT INTO settings (key, value) VALUES ('alert.email.smtp_host', '\"mail.example.com\"')"
    )
    await api.store.put_settings({}, "ana", remove=["alert.email.smtp_port"])
    assert (await kv.get(subjects.kv_key("alert.email.smtp_host"))).value == b'"mail.example.com"'

    async def gone() -> bool:
        try:
            await kv.get(key)
        except KeyNotFoundError:
            return True
        return False

    await eventually(gone, what="the removed setting deleted from the bucket")


async def test_announcing_never_fails_the_request_for_a_pool_lost_after_the_publish(
    api: Api, js: JetStreamContext, database_url: str
) -> None:
    await _seed(api)
    row = await api.store.pool.fetchrow(
        "UPDATE violations SET acknowledged_by = 'ana', acknowledged_at = now(), action_seq = 1,"
        " action_pending = true WHERE id = 'v1' RETURNING *"
    )
    assert row is not None
    closed = await create_pool(database_url, min_size=1, max_size=1)
    await closed.close()  # the clearing of the mark, after the publish, meets a pool gone away
    outbox = ViolationActions(lambda: closed)
    outbox.attach(api.runtime.publisher)
    assert await outbox.announce(row) is False
    [(_, ev)] = await actions(js)
    assert (ev.action, ev.acknowledged_by) == ("acknowledged", "ana")
    assert await pending(api)  # still marked: the API's loop publishes it again (a duplicate)
