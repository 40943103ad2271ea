"""Alerting through the API: test sends, incidents, silences and notifications, against a real
alerter answering over NATS (or none: 504), a real SMTP server and a local HTTP channel."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from msgspec import structs
from nats.js import JetStreamContext

from llmscope.api.incidents_store import store_incidents
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.bus.publisher import Publisher
from llmscope.proto import codec, subjects
from llmscope.proto.incident import IncidentEvent, RepagedEpisode, SimilarIncident
from llmscope.proto.repage import RepagedRequest
from tests.alerter.factories import HttpSink, Mailbox, smtp_server, webhook_sink
from tests.alerter.factories import violation as alerter_violation
from tests.alerter.harness import eventually, publish
from tests.api.alerting_harness import incident_event, live_alerter
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import login


def field_of(response: Any) -> list[str]:
    return [d.get("field") or ".".join(map(str, d["loc"][1:])) for d in response.json()["detail"]]


async def test_test_send_goes_through_the_alerter_and_reports_the_channel(
    api: Api, database_url: str, nats_url: str
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    failing = HttpSink(lambda r, n: _status(500))
    hook_url = await failing.start()
    try:
        for key, value in {
            "alert.email.smtp_host": "127.0.0.1",
            "alert.email.smtp_port": smtp.port,
            "alert.email.tls": "none",
            "alert.email.recipients": ["oncall@example.com"],
            "alert.email.smtp_password": "hunter2-secret",
            "alert.email.enabled": True,
        }.items():
            r = await api.client.put(f"/api/settings/{key}", json={"value": value})
            assert r.status_code == 200, r.text
        env = {"LLMSCOPE_WEBHOOK_URL": hook_url + "/hook-s3cret"}
        async with live_alerter(database_url, nats_url, None, env):
            r = await api.client.post("/api/alerts/test", json={"channel": "email"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["ok"] is True
            assert body["status"] == "sent"
            assert body["kind"] == "email"
            assert body["attempts"] == 1
            assert box.envelopes == [["oncall@example.com"]]
            assert (
                box.messages[0]["Subject"] == "[LLMscope] Test notification (sample data, nothing is wrong)"
            )
            assert "hunter2" not in r.text

            r = await api.client.post("/api/alerts/test", json={"channel": "webhook"})
            assert r.status_code == 200
            hook = r.json()
            assert hook["ok"] is False
            assert hook["status"] == "failed"  # one attempt: the 500 is the answer, not retried
            assert hook["attempts"] == 1
            assert hook["detail"] == "HTTP 500"
            assert "s3cret" not in r.text
            assert len(failing.requests) == 1

            r = await api.client.post("/api/alerts/test", json={"channel": "pagerduty"})
            assert r.json()["status"] == "not_configured"

            for bad in ({}, {"channel": ""}, {"channel": 5}):
                r = await api.client.post("/api/alerts/test", json=bad)
                assert r.status_code == 422
                assert field_of(r) == ["channel"]
            assert (await api.anon.post("/api/alerts/test", json={"channel": "email"})).status_code == 401
    finally:
        smtp.stop()
        await failing.stop()


async def _status(code: int) -> Any:
    from aiohttp import web

    return web.Response(status=code, text="no")


async def test_alerter_requests_answer_504_when_no_alerter_runs(api: Api) -> None:
    silence = {"reason": "deploy", "author": "ana", "ends_at": "2099-01-01T00:00:00Z"}
    for method, path, body in (
        ("POST", "/api/alerts/test", {"channel": "email"}),
        ("GET", "/api/notifications", None),
        ("GET", "/api/silences", None),
        ("POST", "/api/silences", silence),
        ("DELETE", "/api/silences/sil-1", None),
        ("POST", "/api/incidents/inc-1/acknowledge", {"by": "ana"}),
        ("POST", "/api/incidents/inc-1/resolve", {"by": "ana"}),
    ):
        r = await api.client.request(method, path, json=body)
        assert r.status_code == 504, (path, r.text)
        assert "alerter" in r.json()["detail"]
    # Reads of the API's own incidents table need no alerter.
    assert (await api.client.get("/api/incidents")).json() == {"items": [], "next_cursor": None}


async def test_incident_events_are_persisted_once_and_served(
    persisting_api: Api, js: JetStreamContext
) -> None:
    api = persisting_api
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    points = [telemetry(i) for i in range(3)]
    members = [violation(points[0], id="ep-a"), violation(points[1], id="ep-b")]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
        await store_violations(conn, members)
    old = incident_event("inc-old", 2, opened_at=t0 - timedelta(days=3), state="resolved", change="resolved")
    first = incident_event("inc-a", 1, opened_at=t0, episode_ids=("ep-a",))
    analyzed = incident_event(
        "inc-a",
        3,
        opened_at=t0,
        change="analyzed",
        episode_ids=("ep-a", "ep-b"),
        llm=True,
        similar=(
            SimilarIncident(incident_id="inc-old", title=old.title, score=0.82, opened_at=old.opened_at),
        ),
    )
    stale = incident_event("inc-a", 2, opened_at=t0, change="updated", episode_ids=("ep-a",))
    other = structs.replace(
        incident_event(
            "inc-b",
            1,
            opened_at=t0 + timedelta(minutes=10),
            models=("qwen2:7b", "phi3"),
            title="Cascade on gpu-1",
        ),
        severity="warning",
    )
    publisher = Publisher(js)
    for ev in (old, first, analyzed, stale, other):
        await publisher.publish_raw(
            subjects.incidents(ev.provider, ev.change), codec.encode(ev), msg_id=ev.id
        )
    # A redelivered copy under another message id: the revision check keeps it harmless.
    await publisher.publish_raw(subjects.incidents("ollama", "updated"), codec.encode(stale), msg_id="copy")

    async def stored() -> bool:
        return bool(await api.store.pool.fetchval("SELECT count(*) FROM incidents") == 3)

    await eventually(stored, what="three incidents")
    await asyncio.sleep(0.3)  # the copy of the stale revision
    assert await api.store.pool.fetchval("SELECT revision FROM incidents WHERE id = 'inc-a'") == 3

    page = (await api.client.get("/api/incidents")).json()
    assert [i["id"] for i in page["items"]] == ["inc-b", "inc-a", "inc-old"]
    assert page["items"][0]["cascade"] is True
    open_ = (await api.client.get("/api/incidents", params={"state": "open"})).json()
    assert [i["id"] for i in open_["items"]] == ["inc-b", "inc-a"]
    critical = (await api.client.get("/api/incidents", params={"severity": "critical"})).json()
    assert [i["id"] for i in critical["items"]] == ["inc-a", "inc-old"]
    warning_up = (await api.client.get("/api/incidents", params={"severity": "warning"})).json()
    assert [i["id"] for i in warning_up["items"]] == ["inc-b", "inc-a", "inc-old"]
    bad = await api.client.get("/api/incidents", params={"severity": "urgent"})
    assert bad.status_code == 422
    assert "severity" in bad.text
    by_model = (await api.client.get("/api/incidents", params={"model": "phi3"})).json()
    assert [i["id"] for i in by_model["items"]] == ["inc-b"]
    since = (
        await api.client.get("/api/incidents", params={"since": (t0 - timedelta(days=1)).isoformat()})
    ).json()
    assert {i["id"] for i in since["items"]} == {"inc-a", "inc-b"}
    one = (await api.client.get("/api/incidents", params={"limit": 1})).json()
    assert [i["id"] for i in one["items"]] == ["inc-b"]
    two = (await api.client.get("/api/incidents", params={"limit": 1, "cursor": one["next_cursor"]})).json()
    assert [i["id"] for i in two["items"]] == ["inc-a"]
    assert (await api.client.get("/api/incidents", params={"cursor": "garbage!"})).status_code == 422
    assert (await api.client.get("/api/incidents", params={"state": "closed"})).status_code == 422

    detail = (await api.client.get("/api/incidents/inc-a")).json()
    assert detail["incident"]["revision"] == 3
    a = detail["analysis"]
    assert a["deterministic_only"] is False
    assert a["hypothesis"] == "GPU memory pressure after a model swap"
    assert a["engineering_email"]
    assert a["customer_notice"]
    assert a["moves"][0]["change_percent"] == 140.0
    (similar,) = detail["similar"]
    assert (similar["incident_id"], similar["title"], similar["score"]) == ("inc-old", old.title, 0.82)
    assert datetime.fromisoformat(similar["opened_at"]) == old.opened_at
    assert [v["id"] for v in detail["violations"]] == ["ep-a", "ep-b"]
    plain = (await api.client.get("/api/incidents/inc-b")).json()
    assert plain["analysis"]["deterministic_only"] is True
    assert plain["analysis"]["hypothesis"] is None
    assert "Deterministic analysis only" in plain["analysis"]["summary"]
    assert (await api.client.get("/api/incidents/nope")).status_code == 404


async def test_violations_become_an_incident_acknowledged_and_resolved_through_the_alerter(
    persisting_api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    """Violations -> the alerter's incident -> incident.v1 -> the API; ack and resolve go back."""
    api = persisting_api
    sink = HttpSink()
    url = await sink.start()
    try:
        async with live_alerter(database_url, nats_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}):
            # Sustained signals on two models of one host: a cascade (a one-point R1 would not be).
            await publish(
                js, alerter_violation(1, rule="CUSUM"), alerter_violation(2, model="qwen2:7b", rule="CUSUM")
            )

            async def listed() -> bool:
                items = (await api.client.get("/api/incidents")).json()["items"]
                return len(items) == 1 and items[0]["violation_count"] == 2

            await eventually(listed, what="the cascade incident in the API")
            incident = (await api.client.get("/api/incidents")).json()["items"][0]
            assert incident["state"] == "open"
            assert sorted(incident["models"]) == ["llama3.1:8b", "qwen2:7b"]
            iid = incident["id"]

            # The notification log, served by the alerter (before the ack stops reminders).
            async def notified() -> bool:
                items = (await api.client.get("/api/notifications")).json()["items"]
                return any(n["status"] == "sent" for n in items)

            await eventually(notified, what="a sent notification")
            items = (await api.client.get("/api/notifications")).json()["items"]
            sent = next(n for n in items if n["status"] == "sent")
            assert sent["channel"] == "webhook"
            assert sent["attempts"] == 1
            assert sent["sent_at"] is not None
            assert sent["last_error"] is None
            assert sent["attempt_log"][0]["ok"] is True
            assert (await api.client.get("/api/notifications", params={"status": "failed"})).json()[
                "items"
            ] == []
            assert (await api.client.get("/api/notifications", params={"channel": "email"})).json()[
                "items"
            ] == []
            assert (
                len(
                    (await api.client.get("/api/notifications", params={"channel": "webhook"})).json()[
                        "items"
                    ]
                )
                >= 1
            )
            future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            assert (await api.client.get("/api/notifications", params={"since": future})).json()[
                "items"
            ] == []
            assert (await api.client.get("/api/notifications", params={"status": "lost"})).status_code == 422

            people = "SELECT acknowledged_by, resolved_by, note FROM violations ORDER BY id"

            async def logged() -> bool:  # the violations in the API's own log too
                return len(await api.store.pool.fetch(people)) == 2

            await eventually(logged, what="both violations in the API's log")
            r = await api.client.post(
                f"/api/incidents/{iid}/acknowledge", json={"by": "ana", "note": "on it"}
            )
            assert r.status_code == 200, r.text
            # Its violations are acknowledged in the API's log as well (they stayed unacknowledged).
            rows = [tuple(r) for r in await api.store.pool.fetch(people)]
            assert rows == [("ana", None, "on it")] * 2
            assert r.json()["state"] == "acknowledged"
            assert r.json()["acknowledged_by"] == "ana"
            assert r.json()["acknowledged_note"] == "on it"
            # Stored at once (and again, idempotently, when the published event arrives).
            detail = (await api.client.get(f"/api/incidents/{iid}")).json()
            assert detail["incident"]["state"] == "acknowledged"
            r = await api.client.post(f"/api/incidents/{iid}/acknowledge", json={"by": "bob"})
            assert r.status_code == 409
            assert "acknowledged" in r.json()["detail"]
            r = await api.client.post(f"/api/incidents/{iid}/acknowledge", json={"note": "who?"})
            assert r.status_code == 422
            assert field_of(r) == ["by"]
            r = await api.client.post(
                f"/api/incidents/{iid}/resolve", json={"by": "ana", "note": "rolled back"}
            )
            assert r.status_code == 200
            assert r.json()["state"] == "resolved"
            assert r.json()["resolved_note"] == "rolled back"
            # ... and resolved: their records are closed too (the model's status still follows
            # its charts: a violation not cleared keeps it degraded).
            rows = [tuple(r) for r in await api.store.pool.fetch(people)]
            assert rows == [("ana", "ana", "rolled back")] * 2
            assert (
                await api.client.post("/api/incidents/nope/resolve", json={"by": "ana"})
            ).status_code == 404

            async def published() -> bool:
                row = await api.store.pool.fetchrow("SELECT state, change FROM incidents WHERE id = $1", iid)
                return row is not None and row["state"] == "resolved"

            await eventually(published, what="the resolved revision through JetStream")
            state = await api.store.pool.fetchval(
                "SELECT state FROM alerter_incidents WHERE id = $1", iid
            )  # the alerter's own record (read here only to check; the API never does)
            assert state == "resolved"

    finally:
        await sink.stop()


async def test_notifications_page_through_failures_with_a_cursor(
    api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    failing = HttpSink(lambda r, n: _status(400))  # permanent: one attempt, failed
    url = await failing.start()
    try:
        async with live_alerter(database_url, nats_url, js, {"LLMSCOPE_WEBHOOK_URL": url}):
            await publish(js, alerter_violation(1, host="h1"), alerter_violation(2, model="m2", host="h2"))

            async def two() -> bool:
                items = (await api.client.get("/api/notifications", params={"status": "failed"})).json()[
                    "items"
                ]
                return len(items) == 2

            await eventually(two, what="two failed notifications")
            first = (await api.client.get("/api/notifications", params={"limit": 1})).json()
            assert len(first["items"]) == 1
            assert first["items"][0]["last_error"]
            assert "400" in first["items"][0]["last_error"]
            assert first["items"][0]["sent_at"] is None
            rest = (
                await api.client.get(
                    "/api/notifications", params={"limit": 1, "cursor": first["next_cursor"]}
                )
            ).json()
            assert len(rest["items"]) == 1
            assert rest["items"][0]["id"] != first["items"][0]["id"]
            assert rest["next_cursor"] is None
    finally:
        await failing.stop()


async def test_silences_create_list_expire_and_validation(
    api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    async with live_alerter(database_url, nats_url, js):
        ends = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        r = await api.client.post(
            "/api/silences",
            json={
                "reason": "deploy 42",
                "author": "ana",
                "models": ["llama3*"],
                "rules": ["R1"],
                "ends_at": ends,
            },
        )
        assert r.status_code == 201, r.text
        one_off = r.json()
        assert one_off["active"] is True
        assert one_off["models"] == ["llama3*"]
        r = await api.client.post(
            "/api/silences",
            json={
                "kind": "maintenance",
                "reason": "weekly backup",
                "author": "ops",
                "providers": ["ollama"],
                "weekly_days": ["sat", "sun"],
                "weekly_start": "22:00",
                "weekly_end": "02:00",
                "timezone": "Europe/Berlin",
            },
        )
        assert r.status_code == 201, r.text
        weekly = r.json()
        assert weekly["weekly_days"] == ["sat", "sun"]
        assert (weekly["weekly_start"], weekly["weekly_end"], weekly["timezone"]) == (
            "22:00",
            "02:00",
            "Europe/Berlin",
        )

        listed = (await api.client.get("/api/silences")).json()
        assert {s["id"] for s in listed} == {one_off["id"], weekly["id"]}
        # The alerter's dispatcher sees it: its store is where silences live.
        stored = await api.store.pool.fetchval("SELECT count(*) FROM alerter_silences")
        assert stored == 2

        r = await api.client.delete(f"/api/silences/{one_off['id']}")
        assert r.status_code == 200
        assert r.json()["expired_at"] is not None
        assert r.json()["active"] is False
        assert [s["id"] for s in (await api.client.get("/api/silences")).json()] == [weekly["id"]]
        everything = (await api.client.get("/api/silences", params={"include_expired": True})).json()
        assert len(everything) == 2
        assert (await api.client.delete("/api/silences/sil-nope")).status_code == 404

        cases: list[tuple[dict[str, Any], str]] = [
            ({"author": "ana", "ends_at": ends}, "reason"),
            ({"reason": "x", "ends_at": ends}, "author"),
            ({"reason": "  ", "author": "ana", "ends_at": ends}, "reason"),
            ({"reason": "x", "author": " ", "ends_at": ends}, "author"),
            ({"reason": "x", "author": "ana"}, "ends_at"),
            ({"reason": "x", "author": "ana", "ends_at": "2001-01-01T00:00:00Z"}, "ends_at"),
            ({"reason": "x", "author": "ana", "starts_at": ends, "ends_at": ends}, "ends_at"),
            ({"reason": "x", "author": "ana", "ends_at": "2099-01-01T00:00:00"}, "ends_at"),
            (
                {
                    "reason": "x",
                    "author": "ana",
                    "weekly_days": ["funday"],
                    "weekly_start": "1:00",
                    "weekly_end": "2:00",
                },
                "weekly_days",
            ),
            (
                {
                    "reason": "x",
                    "author": "ana",
                    "weekly_days": ["mon"],
                    "weekly_start": "25:00",
                    "weekly_end": "02:00",
                },
                "weekly_start",
            ),
            ({"reason": "x", "author": "ana", "weekly_days": ["mon"], "weekly_end": "02:00"}, "weekly_start"),
            (
                {
                    "reason": "x",
                    "author": "ana",
                    "weekly_days": ["mon"],
                    "weekly_start": "01:00",
                    "weekly_end": "02:00",
                    "timezone": "Mars/Base",
                },
                "timezone",
            ),
            ({"reason": "x", "author": "ana", "ends_at": ends, "kind": "forever"}, "kind"),
        ]
        for body, field in cases:
            r = await api.client.post("/api/silences", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field_of(r) == [field], (body, r.json())
        assert len((await api.client.get("/api/silences", params={"include_expired": True})).json()) == 2


async def test_monthly_silences_create_list_and_name_the_field_at_fault(
    api: Api, database_url: str, nats_url: str
) -> None:
    async with live_alerter(database_url, nats_url, None):
        first_sunday = {
            "kind": "maintenance",
            "reason": "OS patches",
            "author": "ops",
            "monthly_weekdays": ["First Sunday"],
            "monthly_start": "02:00",
            "monthly_end": "04:00",
            "timezone": "Europe/Berlin",
        }
        r = await api.client.post("/api/silences", json=first_sunday)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["monthly_weekdays"] == ["first sun"]
        assert created["monthly_days"] == []
        assert (created["monthly_start"], created["monthly_end"], created["timezone"]) == (
            "02:00",
            "04:00",
            "Europe/Berlin",
        )
        assert created["weekly_days"] == []
        fifteenth = {
            "reason": "billing run",
            "author": "ops",
            "monthly_days": [15],
            "monthly_start": "22:00",
            "monthly_end": "01:00",
        }
        r = await api.client.post("/api/silences", json=fifteenth)
        assert r.status_code == 201, r.text
        assert r.json()["monthly_days"] == [15]
        listed = {s["id"]: s for s in (await api.client.get("/api/silences")).json()}
        assert listed[created["id"]]["monthly_weekdays"] == ["first sun"]
        assert listed[r.json()["id"]]["timezone"] == "UTC"

        base = {"reason": "x", "author": "ana", "monthly_start": "01:00", "monthly_end": "02:00"}
        cases: list[tuple[dict[str, Any], str]] = [
            ({**base, "monthly_days": [32]}, "monthly_days"),
            ({**base, "monthly_days": [0, 1]}, "monthly_days"),
            (base, "monthly_days"),
            ({**base, "monthly_weekdays": ["fifth sun"]}, "monthly_weekdays"),
            ({**base, "monthly_days": [1], "monthly_start": "1am"}, "monthly_start"),
            ({**base, "monthly_days": [1], "monthly_end": "01:00"}, "monthly_end"),
            ({**base, "monthly_days": [1], "timezone": "Mars/Base"}, "timezone"),
            ({"reason": "x", "author": "ana", "monthly_days": [1], "monthly_end": "02:00"}, "monthly_start"),
            ({"reason": "x", "author": "ana", "monthly_days": [1], "monthly_start": "02:00"}, "monthly_end"),
            (
                {
                    **base,
                    "monthly_days": [1],
                    "weekly_days": ["mon"],
                    "weekly_start": "01:00",
                    "weekly_end": "02:00",
                },
                "monthly_days",
            ),
        ]
        for body, field in cases:
            r = await api.client.post("/api/silences", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field_of(r) == [field], (body, r.json())
        r = await api.client.post("/api/silences", json={**base, "monthly_days": [32]})
        assert "32 is not a day of the month" in r.text
        assert len((await api.client.get("/api/silences", params={"include_expired": True})).json()) == 2


async def test_a_violation_paged_again_after_a_hand_resolution_is_open_again_at_the_api(
    persisting_api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    """The alerter pages again a violation resolved by hand that the engine never cleared; the
    on-call who gets that page finds its incident and violation open again in the API (the
    alerter tells it in the incident's ``repaged``) and can acknowledge and resolve them again,
    which the channels hear. A replay of that event reopens nothing resolved since."""
    api = persisting_api
    sink, got = await webhook_sink()
    try:
        async with live_alerter(
            database_url,
            nats_url,
            js,
            {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
            repage_after_resolve=2.5,
        ):
            ev = alerter_violation(1, rule="CUSUM")
            await publish(js, ev)
            row_sql = (
                "SELECT acknowledged_by, resolved_by, resolved_at, note, action_pending FROM violations"
                " WHERE id = $1"
            )

            async def person_state() -> asyncpg.Record:
                """The violation's human state in the API's log."""
                row = await api.store.pool.fetchrow(row_sql, ev.id)
                assert row is not None
                return row

            async def listed() -> bool:
                items = (await api.client.get("/api/incidents")).json()["items"]
                row = await api.store.pool.fetchrow(row_sql, ev.id)
                return len(items) == 1 and row is not None

            await eventually(listed, what="the incident and its violation in the API")
            iid = (await api.client.get("/api/incidents")).json()["items"][0]["id"]
            await eventually(lambda: len(got) >= 1, what="the page")
            r = await api.client.post(
                f"/api/incidents/{iid}/resolve", json={"by": "ana", "note": "restarted"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "resolved"
            assert (await person_state())["resolved_by"] == "ana"
            await eventually(
                lambda: any("STILL FAILING after resolved by ana" in g.title for g in got),
                what="the page again",
            )

            async def reopened() -> bool:
                state = await api.store.pool.fetchval("SELECT state FROM incidents WHERE id = $1", iid)
                row = await person_state()
                return state == "open" and row["resolved_at"] is None

            await eventually(reopened, what="the incident and its violation open again at the API")
            detail = (await api.client.get(f"/api/incidents/{iid}")).json()
            assert detail["incident"]["state"] == "open"
            assert detail["incident"]["resolved_by"] is None
            row = await person_state()
            assert (row["acknowledged_by"], row["resolved_by"], row["action_pending"]) == (None, None, False)
            assert row["note"] == "restarted"  # the person's word stays on record
            raw = await api.store.pool.fetchval("SELECT event FROM incidents WHERE id = $1", iid)
            paged_again = msgspec.convert(raw if isinstance(raw, dict) else json.loads(raw), IncidentEvent)
            assert [(p.episode_id, p.resolved_by) for p in paged_again.repaged] == [(ev.episode_id, "ana")]
            violation_page = (await api.client.get(f"/api/violations/{ev.id}")).json()["violation"]
            assert violation_page["resolved_by"] is None
            # The dashboard offers both again: the incident page and the violation page.
            page = await login(api)
            assert '<button type="submit">Acknowledge</button>' in (await page.get(f"/incidents/{iid}")).text
            shown = (await page.get(f"/violations/{ev.id}")).text
            assert f'hx-post="/violations/{ev.id}/resolve"' in shown
            assert f'hx-post="/violations/{ev.id}/acknowledge"' in shown

            # The on-call acknowledges the incident again, then resolves the violation again.
            r = await api.client.post(f"/api/incidents/{iid}/acknowledge", json={"by": "bo"})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "acknowledged"
            r = await api.client.post(
                f"/api/violations/{ev.id}/resolve", json={"resolved_by": "bo", "note": "rolled back"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["resolved_by"] == "bo"
            await eventually(
                lambda: any(g.title.startswith("[LLMscope] RESOLVED by bo:") for g in got),
                what="the channels told of the second resolution",
            )
            r = await api.client.post(f"/api/incidents/{iid}/resolve", json={"by": "bo"})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "resolved"

            # The page again's event once more (a replay, a redelivery) undoes nothing.
            async with api.store.pool.acquire() as conn:
                await store_incidents(conn, [paged_again])
            row = await person_state()
            assert row["resolved_by"] == "bo"
            assert (
                await api.store.pool.fetchval("SELECT state FROM incidents WHERE id = $1", iid) == "resolved"
            )
    finally:
        await sink.stop()


async def test_a_warning_paged_again_outside_any_incident_is_open_again_at_the_api(
    persisting_api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    """Warnings notified (``alert.min_severity: warning``) but below the incidents' severity: a
    warning is paged with no incident, resolved by hand at the API, and paged again, the engine
    never clearing it. No incident.v1 event can carry that page again; the alerter tells the API
    over the bus (``llmscope.control.v1.api.violations.repaged``) and the API reopens its row,
    as for a violation in an incident. Told once: a repeat reopens nothing resolved since."""
    api = persisting_api
    sink, got = await webhook_sink()
    try:
        async with live_alerter(
            database_url,
            nats_url,
            js,
            {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
            repage_after_resolve=2.5,
            severities=("critical", "warning"),
        ) as live:
            run = live.run
            # No API answers at first (down, or not upgraded): the alerter tells it later.
            await api.runtime.repages.stop()
            ev = alerter_violation(1, rule="R2", severity="warning")
            await publish(js, ev)
            row_sql = (
                "SELECT acknowledged_by, resolved_by, resolved_at, action_pending FROM violations"
                " WHERE id = $1"
            )

            async def stored() -> bool:
                return await api.store.pool.fetchrow(row_sql, ev.id) is not None

            await eventually(stored, what="the warning in the API")
            await eventually(lambda: len(got) >= 1, what="the warning's page")
            assert got[0].incident_id == "", got[0]
            r = await api.client.post(
                f"/api/violations/{ev.id}/resolve", json={"resolved_by": "ana", "note": "flaky probe"}
            )
            assert r.status_code == 200, r.text
            await eventually(
                lambda: any("STILL FAILING after resolved by ana" in g.title for g in got),
                what="the page again",
            )
            await run.alerter.tell_api_repages()
            assert await run.pool.fetchval(
                "SELECT repage_told_api_at IS NULL FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
            )
            assert (
                await api.store.pool.fetchval("SELECT resolved_by FROM violations WHERE id = $1", ev.id)
                == "ana"
            )
            assert api.runtime.nc is not None
            await api.runtime.repages.start(api.runtime.nc)

            async def reopened() -> bool:
                row = await api.store.pool.fetchrow(row_sql, ev.id)
                return row is not None and row["resolved_at"] is None

            await eventually(reopened, what="the warning open again at the API")
            row = await api.store.pool.fetchrow(row_sql, ev.id)
            assert row is not None
            assert (row["acknowledged_by"], row["resolved_by"], row["action_pending"]) == (None, None, False)
            assert (await api.client.get("/api/incidents")).json()["items"] == []
            shown = (await (await login(api)).get(f"/violations/{ev.id}")).text
            assert f'hx-post="/violations/{ev.id}/resolve"' in shown
            # Told once: the alerter records it (no more requests for this page again) ...
            await eventually(
                lambda: run.pool.fetchval(
                    "SELECT repage_told_api_at = repaged_at FROM alerter_alerts WHERE episode_id = $1",
                    ev.episode_id,
                ),
                what="the page again recorded as told",
            )
            assert await run.alerter.tell_api_repages() == 0
            # ... and a repeat (another replica, a restart before the record) undoes nothing
            # resolved since: what that request reopened is said in its answer (a later page
            # again of bo's resolution, after the delay, would reopen it in its turn).
            repaged_at = await run.pool.fetchval(
                "SELECT repaged_at FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
            )
            again = RepagedEpisode(episode_id=ev.episode_id, repaged_at=repaged_at, resolved_by="ana")
            r = await api.client.post(f"/api/violations/{ev.id}/resolve", json={"resolved_by": "bo"})
            assert r.status_code == 200, r.text
            reply = await api.runtime.repages.reopen(RepagedRequest(episodes=(again,)))
            assert (reply.status, reply.reopened) == ("ok", ())
            assert await run.alerter.api.tell_repaged([again])  # over the bus, answered ok
    finally:
        await sink.stop()
