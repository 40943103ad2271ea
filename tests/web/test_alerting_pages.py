"""The alerting pages (incidents, silences, notifications, setup test sends), each as a full page
and as the HTMX fragment it serves, with a real alerter answering over NATS or none at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from msgspec import structs
from nats.js import JetStreamContext

from llmscope.api.incidents_store import store_incidents
from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.incident import ResembledIncident, SimilarIncident, TicketRef
from tests.alerter.factories import HttpSink, Mailbox, smtp_server
from tests.alerter.factories import violation as alerter_violation
from tests.alerter.harness import eventually, publish
from tests.api.alerting_harness import incident_event, live_alerter
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import HX, is_full_page, login


async def seed_incidents(api: Api) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    points = [telemetry(i) for i in range(2)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
        await store_violations(conn, [violation(points[0], id="ep-a"), violation(points[1], id="ep-b")])
        old = incident_event(
            "inc-old", 2, opened_at=t0 - timedelta(days=2), state="resolved", change="resolved"
        )
        similar = (SimilarIncident(incident_id="inc-old", title=old.title, score=0.77),)
        await store_incidents(
            conn,
            [
                old,
                structs.replace(
                    incident_event(
                        "inc-a", 3, opened_at=t0, episode_ids=("ep-a", "ep-b"), llm=True, similar=similar
                    ),
                    resembles=ResembledIncident(
                        incident_id="inc-old",
                        title=old.title,
                        score=0.93,
                        resolved_at=t0 - timedelta(days=1),
                        resolved_by="ana",
                        resolved_note="Drained gpu-1 and restarted ollama.",
                    ),
                    ticket=TicketRef(
                        tracker="github", key="42", url="https://github.example/acme/llm/issues/42"
                    ),
                ),
                structs.replace(
                    incident_event("inc-b", 1, opened_at=t0 + timedelta(minutes=5), models=("qwen2:7b",)),
                    severity="warning",
                ),
                structs.replace(
                    incident_event(
                        "inc-m", 2, opened_at=t0, models=("qwen2:7b",), state="resolved", change="resolved"
                    ),
                    merged_into="inc-a",
                    resolved_at=t0 + timedelta(seconds=2),
                ),
            ],
        )


@pytest.mark.parametrize("hx", [False, True])
async def test_incident_list_and_detail(api: Api, hx: bool) -> None:
    await seed_incidents(api)
    client = await login(api)
    headers = HX if hx else {}
    r = await client.get("/incidents", headers=headers)
    assert r.status_code == 200
    assert is_full_page(r.text) is not hx
    assert r.text.index("/incidents/inc-b") < r.text.index("/incidents/inc-a")
    assert "/incidents/inc-old" in r.text
    r = await client.get("/incidents?state=resolved", headers={**headers, "HX-Target": "incident-table"})
    assert "/incidents/inc-old" in r.text
    assert "/incidents/inc-a" not in r.text
    if hx:
        assert r.text.lstrip().startswith('<div id="incident-table"')
    r = await client.get("/incidents?severity=critical", headers=headers)
    assert "/incidents/inc-a" in r.text
    assert "/incidents/inc-b" not in r.text
    r = await client.get("/incidents?severity=warning", headers=headers)
    assert "/incidents/inc-a" in r.text
    assert "/incidents/inc-b" in r.text

    r = await client.get("/incidents/inc-a", headers=headers)
    assert r.status_code == 200
    assert is_full_page(r.text) is not hx
    assert "Root-cause hypothesis (LLM)" in r.text
    assert "GPU memory pressure after a model swap" in r.text
    assert "Customer notice (LLM)" in r.text
    # The analysis table: its chart's prompt, and every figure in its units.
    assert "<td>long-1</td><td>latency_ms</td><td>800 ms</td><td>1.92 s</td>" in r.text
    # The figure is a level (a mean of the signal's points), never "worst seen": one answer of the
    # incident may be slower than it, and the Violations table below shows that answer.
    assert ">Level at its worst</th>" in r.text
    assert "Worst seen" not in r.text
    assert "not one answer" in r.text
    assert "<td>+140 %</td><td>+4.20 σ</td>" in r.text
    assert "0.77" in r.text  # the similar incident's score
    assert 'href="/incidents/inc-old"' in r.text
    assert 'href="/violations/ep-a"' in r.text
    # the resembled incident's resolution note, and the ticket
    assert "Seen before" in r.text
    assert "Drained gpu-1 and restarted ollama." in r.text
    assert "resemblance 0.93" in r.text
    assert 'href="https://github.example/acme/llm/issues/42">github 42</a> (open)' in r.text
    assert 'href="/violations/ep-b"' in r.text
    assert "Merged into" not in r.text
    # Its changes in words: how often it changed since it opened, the last how and when (a bare
    # "revision 3" meant little to the person on call); its revision in the title.
    assert "revision 3</p>" not in r.text
    assert "title=\"revision 3, the alerter's latest publication of it (opened at " in r.text
    assert "changed 1 time since it opened (1 violation joined), the last (a violation joined) at " in r.text
    r = await client.get("/incidents/inc-m", headers=headers)
    assert 'Merged into <a href="/incidents/inc-a">incident inc-a</a>' in r.text
    assert "changed 1 time since it opened (resolved), the last (merged into inc-a) at " in r.text
    at = r.text.split("the last (merged into inc-a) at ", 1)[1][:23]  # resolved: opened + 2 s
    published = datetime.strptime(at, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    assert timedelta(minutes=59) < datetime.now(UTC) - published < timedelta(minutes=61)
    r = await client.get("/incidents/inc-b", headers=headers)
    assert "unchanged since it opened</span>" in r.text
    assert "Deterministic analysis only" in r.text
    assert "Root-cause hypothesis" not in r.text
    assert (await client.get("/incidents/nope", headers=headers)).status_code == 404

    # From a violation to its incident.
    r = await client.get("/violations/ep-b", headers=headers)
    assert 'href="/incidents/for-episode/ep-b"' in r.text
    r = await client.get("/incidents/for-episode/ep-b", headers=headers)
    assert r.status_code == 303
    assert r.headers["location"] == "/incidents/inc-a"
    assert (await client.get("/incidents/for-episode/ep-zzz", headers=headers)).status_code == 404
    # The nav links the new pages.
    r = await client.get("/incidents")
    for link in ('href="/incidents"', 'href="/silences"', 'href="/notifications"'):
        assert link in r.text


async def test_an_incidents_changes_count_what_changed_in_it_not_its_revisions(api: Api) -> None:
    """ "changed N times" was the revision less one: an analysis written (at opening, after each
    change, again after the resolution) and a resolution note copied from a violation each
    counted as a change, so an incident acknowledged and resolved read "changed 5 times, the last
    (analysis written)". It counts violations joining (a merge's too), the acknowledgement and the
    resolution; the revision stays in the title."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    at = [t0 + timedelta(minutes=m) for m in range(6)]
    done = structs.replace(
        incident_event("inc-done", 6, opened_at=t0, state="resolved", change="analyzed", episode_ids=("e1",)),
        acknowledged_at=at[2],
        acknowledged_by="ana",
        resolved_at=at[3],
        resolved_by="ana",
        resolved_note="restarted ollama",  # copied from its violation's resolution: revision 5
    )
    merged = structs.replace(  # a cascade: another incident's two violations merged into it
        incident_event("inc-grew", 4, opened_at=t0, change="analyzed", episode_ids=("e2", "e3", "e4")),
        last_violation_at=at[4],
    )
    quiet = incident_event("inc-quiet", 2, opened_at=t0, change="analyzed", episode_ids=("e5",))
    async with api.store.pool.acquire() as conn:
        await store_incidents(conn, [done, merged, quiet])
    client = await login(api)

    def said(html: str) -> str:
        return html.split('class="revision"', 1)[1].split(">", 1)[1].split("</span>", 1)[0]

    r = await client.get("/incidents/inc-done")
    assert said(r.text) == (
        "changed 2 times since it opened (acknowledged, resolved),"
        f" the last (resolved) at {at[3]:%Y-%m-%d %H:%M:%S} UTC"
    )
    assert "title=\"revision 6, the alerter's latest publication of it (analysis written at " in r.text
    r = await client.get("/incidents/inc-grew")
    assert said(r.text) == (
        "changed 2 times since it opened (2 violations joined),"
        f" the last (a violation joined) at {at[4]:%Y-%m-%d %H:%M:%S} UTC"
    )
    assert said((await client.get("/incidents/inc-quiet")).text) == "unchanged since it opened"


async def test_incident_actions_go_through_the_alerter(
    api: Api, js: JetStreamContext, database_url: str, nats_url: str
) -> None:
    client = await login(api)
    async with live_alerter(database_url, nats_url, js) as live:
        await publish(js, alerter_violation(1))

        async def incident_id() -> str | None:
            found: str | None = await api.store.pool.fetchval("SELECT id FROM alerter_incidents")
            return found

        async def opened() -> bool:
            return await incident_id() is not None

        await eventually(opened, what="the alerter's incident")
        iid = await incident_id()
        assert iid is not None
        ev = await live.run.store.incident(iid)
        assert ev is not None
        async with api.store.pool.acquire() as conn:  # what the persister would store
            await store_incidents(conn, [ev])

        target = {**HX, "HX-Target": "actions"}
        r = await client.post(
            f"/incidents/{iid}/acknowledge", data={"by": "ana", "note": "looking"}, headers=target
        )
        assert r.status_code == 200
        assert r.text.lstrip().startswith('<div id="actions"')
        assert "Acknowledged by <b>ana</b>" in r.text
        assert "looking" in r.text
        # The resolve that usually follows keeps the name this browser just gave (remembered_by).
        assert 'placeholder="your name" autocomplete="name" value="ana">' in r.text
        r = await client.post(f"/incidents/{iid}/acknowledge", data={"by": "bob"}, headers=target)
        assert r.status_code == 200  # htmx swaps only 2xx; the fragment says why
        assert 'class="error"' in r.text
        r = await client.post(f"/incidents/{iid}/acknowledge", data={"by": "bob"})
        assert r.status_code == 409
        assert is_full_page(r.text)
        # A blank name is refused naming the field (it was recorded as "dashboard": nobody).
        for blank, status in (({"by": ""}, 422), ({"by": "  "}, 422), ({}, 422)):
            r = await client.post(f"/incidents/{iid}/resolve", data=blank)
            assert r.status_code == status, r.text
            assert "by: required: the name recorded as who resolved it" in r.text
        r = await client.post(f"/incidents/{iid}/resolve", data={"by": ""}, headers=target)
        assert r.status_code == 200  # htmx swaps only 2xx; the fragment says why
        assert '<p class="error">by: required: the name recorded as who resolved it</p>' in r.text
        assert "Resolved by" not in r.text
        r = await client.post(f"/incidents/{iid}/resolve", data={"by": "ana"})
        assert r.status_code == 200
        assert is_full_page(r.text)
        assert "Resolved by <b>ana</b>" in r.text
        assert "dashboard</b>" not in r.text
        assert "<button" not in r.text.split('id="actions"')[1].split("</div>")[0]
        assert (
            await client.post("/incidents/nope/resolve", data={"by": "x"}, headers=target)
        ).status_code == 404


@pytest.mark.parametrize("hx", [False, True])
async def test_silences_page_creates_lists_and_expires(
    api: Api, database_url: str, nats_url: str, hx: bool
) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "silence-list"} if hx else {}
    async with live_alerter(database_url, nats_url, None):
        r = await client.get("/silences", headers=headers)
        assert r.status_code == 200, r.text
        assert is_full_page(r.text) is not hx
        assert "No silences." in r.text
        if not hx:
            assert 'name="reason"' in r.text
            # Each weekday box inside its own label, beside its name.
            assert '<label class="check" for="wd-sat"><input type="checkbox" id="wd-sat"' in r.text
            assert 'name="hosts"' in r.text
        ends = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
        r = await client.post(
            "/silences",
            data={
                "reason": "deploy 42",
                "author": "ana",
                "models": "llama3*, qwen2:7b",
                "hosts": "gpu-*",
                "ends_at": ends,
            },
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert "created by ana" in r.text
        assert "model=llama3*|qwen2:7b host=gpu-*" in r.text
        assert "created by ana" in r.headers["hx-trigger"]
        r = await client.post(
            "/silences",
            data={
                "kind": "maintenance",
                "reason": "backups",
                "author": "ops",
                "weekly_days": ["sat", "sun"],
                "weekly_start": "22:00",
                "weekly_end": "02:00",
                "timezone": "Europe/Berlin",
            },
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert "sat,sun 22:00–02:00 Europe/Berlin" in r.text

        r = await client.post("/silences", data={"author": "ana", "ends_at": ends}, headers=headers)
        assert r.status_code == (200 if hx else 422)
        assert "reason: a silence needs a reason" in r.text
        assert '"level": "error"' in r.headers["hx-trigger"]
        r = await client.post("/silences", data={"reason": "x", "author": "ana"}, headers=headers)
        assert "ends_at" in r.text
        r = await client.post(
            "/silences", data={"reason": "x", "author": "a", "ends_at": "soon"}, headers=headers
        )
        assert "ends_at: expected a date and time" in r.text

        silences = await api.store.pool.fetch("SELECT id FROM alerter_silences ORDER BY created_at")
        assert len(silences) == 2
        sid = silences[0]["id"]
        r = await client.post(f"/silences/{sid}/expire", headers=headers)
        assert r.status_code == 200
        assert f"Silence {sid} expired." in r.text
        assert sid not in r.text.split("expired.")[1]
        r = await client.get("/silences?expired=1", headers=headers)
        assert sid in r.text
        r = await client.post("/silences/sil-nope/expire", headers=headers)
        assert r.status_code == (200 if hx else 404)


@pytest.mark.parametrize("hx", [False, True])
async def test_silences_page_creates_and_lists_monthly_windows(
    api: Api, database_url: str, nats_url: str, hx: bool
) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "silence-list"} if hx else {}
    async with live_alerter(database_url, nats_url, None):
        if not hx:
            page = (await client.get("/silences")).text
            for name in ("monthly_days", "monthly_nth", "monthly_weekday", "monthly_start", "monthly_end"):
                assert f'name="{name}"' in page
        monthly = {"kind": "maintenance", "reason": "patches", "author": "ops"}
        r = await client.post(
            "/silences",
            data={
                **monthly,
                "monthly_nth": "first",
                "monthly_weekday": "sun",
                "monthly_start": "02:00",
                "monthly_end": "04:00",
                "timezone": "Europe/Berlin",
            },
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert "monthly: first sun 02:00–04:00 Europe/Berlin" in r.text
        r = await client.post(
            "/silences",
            data={**monthly, "monthly_days": "15", "monthly_start": "22:00", "monthly_end": "01:00"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert "monthly: 15 22:00–01:00 UTC" in r.text
        r = await client.post(
            "/silences",
            data={
                **monthly,
                "monthly_days": "1, 15",
                "monthly_nth": "last",
                "monthly_weekday": "fri",
                "monthly_start": "06:00",
                "monthly_end": "07:00",
            },
            headers=headers,
        )
        assert "monthly: 1, 15, last fri 06:00–07:00 UTC" in r.text

        for data, error in (
            (
                {"monthly_days": "the 15th", "monthly_start": "22:00", "monthly_end": "01:00"},
                "monthly_days: expected",
            ),
            (
                {"monthly_days": "31, 40", "monthly_start": "22:00", "monthly_end": "01:00"},
                "monthly_days: 40 is not",
            ),
            ({"monthly_days": "15", "monthly_end": "01:00"}, "monthly_start: a monthly window needs a start"),
        ):
            r = await client.post("/silences", data={**monthly, **data}, headers=headers)
            assert r.status_code == (200 if hx else 422)
            assert error in r.text
            assert f'value="{data["monthly_days"]}"' in r.text or hx  # the form keeps what was typed
        stored = await api.store.pool.fetchval("SELECT count(*) FROM alerter_silences")
        assert stored == 3


@pytest.mark.parametrize("hx", [False, True])
async def test_notifications_page(
    api: Api, js: JetStreamContext, database_url: str, nats_url: str, hx: bool
) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "notification-table"} if hx else {}
    sink = HttpSink()
    url = await sink.start()
    try:
        async with live_alerter(database_url, nats_url, js, {"LLMSCOPE_WEBHOOK_URL": url}):
            r = await client.get("/notifications", headers=headers)
            assert r.status_code == 200
            assert is_full_page(r.text) is not hx
            assert "No notifications." in r.text
            await publish(js, alerter_violation(1))

            async def shown() -> bool:
                return "<td>sent</td>" in (await client.get("/notifications", headers=headers)).text

            await eventually(shown, what="the sent notification on the page")
            r = await client.get("/notifications?status=sent&channel=webhook", headers=headers)
            assert "webhook (webhook)" in r.text
            # The incident the message was about is a link away (the group key named it only).
            incident = await api.store.pool.fetchval("SELECT id FROM alerter_incidents")
            assert f'<a href="/incidents/{incident}">incident={incident}</a>' in r.text
            if hx:
                assert r.text.lstrip().startswith('<div id="notification-table"')
            r = await client.get("/notifications?status=failed", headers=headers)
            assert "No notifications." in r.text
            # What a take-over leaves when the sender died mid-send (tests/alerter/test_main.py).
            pool = api.store.pool
            nid = await pool.fetchval("SELECT id FROM alerter_notifications")
            await pool.execute(
                "UPDATE alerter_delivery_attempts SET attempt = attempt + 1 WHERE notification_id = $1", nid
            )
            await pool.execute(
                "INSERT INTO alerter_delivery_attempts (notification_id, attempt, at, ok, retryable,"
                " detail, instance, state) VALUES ($1, 1, now(), false, true, 'the sender (gone) stopped',"
                " 'gone', 'interrupted')",
                nid,
            )
            r = await client.get("/notifications", headers=headers)
            assert "interrupted: the sender (gone) stopped" in r.text
    finally:
        await sink.stop()


@pytest.mark.parametrize("hx", [False, True])
async def test_setup_wizard_sends_a_test_message(
    api: Api, database_url: str, nats_url: str, hx: bool
) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "test-result"} if hx else {}
    box = Mailbox()
    smtp = smtp_server(box)
    try:
        r = await client.get("/setup")
        for channel in (
            "email",
            "slack",
            "webhook",
            "pagerduty",
            "alertmanager",
            "teams",
            "discord",
            "mattermost",
        ):
            assert f'name="channel" value="{channel}"' in r.text
        # While the one attempt runs (up to 10 s): "sending..." shown, the buttons disabled.
        assert 'hx-indicator="#test-sending" hx-disabled-elt=".test-send"' in r.text
        assert '<span id="test-sending" class="htmx-indicator" role="status">sending…</span>' in r.text
        assert r.text.count('class="test-send"') == 9
        for key, value in {
            "alert.email.smtp_host": "127.0.0.1",
            "alert.email.smtp_port": smtp.port,
            "alert.email.tls": "none",
            "alert.email.recipients": ["ops@example.com"],
            "alert.email.enabled": True,
        }.items():
            await api.store.put_setting(key, value, "test")
        async with live_alerter(database_url, nats_url, None):
            r = await client.post("/setup/test", data={"channel": "email"}, headers=headers)
            assert r.status_code == 200
            assert is_full_page(r.text) is not hx
            if hx:
                assert r.text.lstrip().startswith('<div id="test-result"')
            assert "email (email): sent" in r.text
            assert box.envelopes == [["ops@example.com"]]
            # STARTTLS asked of a plain server: a configuration error, told at once, not retried.
            await api.store.put_setting("alert.email.tls", "starttls", "test")
            r = await client.post("/setup/test", data={"channel": "email"}, headers=headers)
            assert "email (email): failed" in r.text
            assert "after 1 attempt<" in r.text
            assert "does not offer STARTTLS" in r.text
            r = await client.post("/setup/test", data={"channel": "slack"}, headers=headers)
            # Nothing was tried: said in words, not "not_configured after 0 attempts".
            assert "slack: not set up: nothing was sent (fill in its fields above and save)</p>" in r.text
            assert "after 0 attempts" not in r.text
            r = await client.post("/setup/test", data={"channel": "carrier-pigeon"}, headers=headers)
            assert r.status_code == (200 if hx else 422)
            assert "channel: choose one of" in r.text
    finally:
        smtp.stop()


@pytest.mark.parametrize("hx", [False, True])
async def test_alerting_pages_say_when_no_alerter_answers(api: Api, hx: bool) -> None:
    await seed_incidents(api)
    client = await login(api)
    headers = HX if hx else {}
    expected = 200 if hx else 504
    for method, path, data in (
        ("GET", "/silences", None),
        ("GET", "/notifications", None),
        ("POST", "/setup/test", {"channel": "email"}),
        ("POST", "/silences", {"reason": "r", "author": "a", "ends_at": "2099-01-01T00:00"}),
        ("POST", "/incidents/inc-b/acknowledge", {"by": "ana"}),
    ):
        r = await client.request(method, path, data=data, headers=headers)
        assert r.status_code == expected, (path, r.text)
        assert "No alerter answered" in r.text
        assert is_full_page(r.text) is not hx
    # The incidents themselves are the API's: still readable.
    assert (await client.get("/incidents/inc-b", headers=headers)).status_code == 200


async def test_an_incident_links_a_silence_filled_in_for_an_hour(
    api: Api, database_url: str, nats_url: str
) -> None:
    """Found by hand: silencing a model in trouble meant typing its names on another page and
    an end date and time into a date picker; an incident now links the silences page filled in
    with its models, provider and host, lasting an hour, and the person gives the reason."""
    await seed_incidents(api)
    client = await login(api)
    page = (await client.get("/incidents/inc-b")).text
    link = page.split('<a href="/silences?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert "models=qwen2%3A7b" in link
    assert "providers=ollama" in link
    assert "for_h=1" in link
    assert "Silence the notifications of this model" in page
    async with live_alerter(database_url, nats_url, None):
        form = (await client.get(f"/silences?{link}")).text
        assert 'name="models" value="qwen2:7b"' in form
        assert 'name="providers" value="ollama"' in form
        assert '<option value="1" selected>1 hour</option>' in form
        assert 'name="reason" value=""' in form
        before = datetime.now(UTC)
        r = await client.post(
            "/silences",
            data={"reason": "provider incident", "author": "ana", "models": "qwen2:7b", "for_h": "1"},
        )
        assert r.status_code == 200, r.text
        assert "created by ana" in r.text
        ends = await api.store.pool.fetchval("SELECT ends_at FROM alerter_silences")
        assert before + timedelta(minutes=59) < ends < datetime.now(UTC) + timedelta(minutes=61)
        r = await client.post("/silences", data={"reason": "x", "author": "ana", "for_h": "soon"})
        assert r.status_code == 422
        assert "for_h: expected hours from 0 to 720" in r.text
