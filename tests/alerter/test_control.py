"""The control responder: silence validation (pure), malformed requests and a monthly
maintenance window over real NATS, Postgres and SMTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from llmscope.alerter.control import ControlResponder, InvalidSilence, silence_from_spec
from llmscope.alerter.service import utcnow
from llmscope.alerter.silences import LAST
from llmscope.config.env import Env
from llmscope.proto import subjects
from llmscope.proto.control import (
    AlertTestReply,
    IncidentActionReply,
    IncidentActionRequest,
    MonthlyWindow,
    SilenceCreateRequest,
    SilenceExpireRequest,
    SilenceListRequest,
    SilenceReply,
    SilenceSpec,
    WeeklyWindow,
)
from tests.alerter.factories import Mailbox, smtp_server, violation
from tests.alerter.flushes import TIMINGS, all_flushed_after, planned
from tests.alerter.harness import eventually, publish, start_alerter

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def spec(**kw: object) -> SilenceSpec:
    fields: dict[str, object] = {"reason": "deploy", "author": "ana", "ends_at": NOW + timedelta(hours=1)}
    fields.update(kw)
    return SilenceSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"reason": " "}, "reason"),
        ({"author": ""}, "author"),
        ({"ends_at": None}, "ends_at"),
        ({"ends_at": NOW - timedelta(minutes=1)}, "ends_at"),
        ({"starts_at": NOW + timedelta(hours=2)}, "ends_at"),
        ({"starts_at": datetime(2026, 3, 2, 13, 0)}, "starts_at"),
        ({"weekly": WeeklyWindow(days=("someday",), start="01:00", end="02:00")}, "weekly.days"),
        ({"weekly": WeeklyWindow(days=(), start="01:00", end="02:00")}, "weekly.days"),
        ({"weekly": WeeklyWindow(days=("mon",), start="1am", end="02:00")}, "weekly.start"),
        ({"weekly": WeeklyWindow(days=("mon",), start="01:00", end="01:00")}, "weekly.end"),
        (
            {"weekly": WeeklyWindow(days=("mon",), start="01:00", end="02:00", timezone="X/Y")},
            "weekly.timezone",
        ),
        ({"monthly": MonthlyWindow(days=(0,), start="01:00", end="02:00")}, "monthly.days"),
        ({"monthly": MonthlyWindow(days=(15, 32), start="01:00", end="02:00")}, "monthly.days"),
        ({"monthly": MonthlyWindow(start="01:00", end="02:00")}, "monthly.days"),
        ({"monthly": MonthlyWindow(weekdays=("fifth sun",), start="01:00", end="02:00")}, "monthly.weekdays"),
        ({"monthly": MonthlyWindow(weekdays=("first",), start="01:00", end="02:00")}, "monthly.weekdays"),
        ({"monthly": MonthlyWindow(days=(1,), start="2am", end="04:00")}, "monthly.start"),
        ({"monthly": MonthlyWindow(days=(1,), start="02:00", end="24:00")}, "monthly.end"),
        ({"monthly": MonthlyWindow(days=(1,), start="02:00", end="02:00")}, "monthly.end"),
        (
            {"monthly": MonthlyWindow(days=(1,), start="02:00", end="04:00", timezone="Europe/Nowhere")},
            "monthly.timezone",
        ),
        (
            {
                "weekly": WeeklyWindow(days=("mon",), start="01:00", end="02:00"),
                "monthly": MonthlyWindow(days=(1,), start="01:00", end="02:00"),
            },
            "monthly",
        ),
    ],
)
def test_invalid_silences_name_their_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSilence) as info:
        silence_from_spec(spec(**kw), "s1", NOW)
    assert info.value.field == field


def test_a_weekly_window_without_an_end_date_is_valid() -> None:
    weekly = WeeklyWindow(days=("Sat", "sunday"), start="22:00", end="02:00", timezone="Europe/Berlin")
    s = silence_from_spec(spec(ends_at=None, weekly=weekly, models=(" llama3* ", "")), "s2", NOW)
    assert s.weekly is not None
    assert s.weekly.days == frozenset({5, 6})
    assert s.models == ("llama3*",)
    assert s.active_at(datetime(2026, 3, 7, 22, 30, tzinfo=UTC))  # Saturday 23:30 in Berlin


def test_a_monthly_window_without_an_end_date_is_valid() -> None:
    monthly = MonthlyWindow(
        days=(15,),
        weekdays=("Last Friday", "first sun"),
        start="22:00",
        end="01:00",
        timezone="Europe/Berlin",
    )
    s = silence_from_spec(spec(ends_at=None, monthly=monthly), "s3", NOW)
    assert s.monthly is not None
    assert (s.monthly.days, s.monthly.weekdays) == (frozenset({15}), frozenset({(LAST, 4), (1, 6)}))
    assert (s.monthly.start, s.monthly.end) == (time(22), time(1))
    assert s.active_at(datetime(2026, 3, 15, 23, 30, tzinfo=UTC))  # the 16th, 00:30 in Berlin
    assert not s.active_at(datetime(2026, 3, 16, 23, 30, tzinfo=UTC))
    # Bounded by dates like any recurring silence.
    bounded = silence_from_spec(spec(monthly=monthly, ends_at=NOW + timedelta(days=2)), "s4", NOW)
    assert not bounded.active_at(datetime(2026, 3, 15, 23, 30, tzinfo=UTC))


def test_old_messages_without_monthly_decode_unchanged() -> None:
    old = b'{"reason": "r", "author": "a", "weekly": {"days": ["mon"], "start": "01:00", "end": "02:00"}}'
    decoded = msgspec.json.decode(old, type=SilenceSpec)
    assert decoded.monthly is None
    assert decoded.weekly == WeeklyWindow(days=("mon",), start="01:00", end="02:00")


async def test_malformed_requests_get_an_answer_naming_the_field(
    database_url: str, nc: NATS, nats_url: str
) -> None:
    run = await start_alerter(database_url, None, {})
    control = ControlResponder(run.alerter, Env({}), session=run.session)
    await control.start(nc)
    try:
        msg = await nc.request(subjects.alerter_silence_create(), b'{"silence": {"reason": 5}}', timeout=5)
        reply = msgspec.json.decode(msg.data, type=SilenceReply)
        assert reply.status == "invalid"
        assert reply.field == "silence.reason"
        msg = await nc.request(subjects.alerter_test(), b"not json", timeout=5)
        test = msgspec.json.decode(msg.data, type=AlertTestReply)
        assert not test.ok
        assert "bad request" in test.detail
        body = b'{"incident_id": "inc-x", "action": "acknowledge", "by": "ana"}'
        msg = await nc.request(subjects.alerter_incident_action(), body, timeout=5)
        assert msgspec.json.decode(msg.data, type=IncidentActionReply).status == "not_found"
    finally:
        await control.stop()
        await run.close()


async def test_a_monthly_silence_created_over_nats_mutes_only_inside_its_window(
    database_url: str, nc: NATS, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    env = {
        "LLMSCOPE_SMTP_HOST": "127.0.0.1",
        "LLMSCOPE_SMTP_PORT": str(smtp.port),
        "LLMSCOPE_SMTP_SECURITY": "none",
        "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
    }
    # The alerter's clock runs from 02:30 in Berlin on Sunday 2026-03-01, the month's first Sunday.
    inside = datetime(2026, 3, 1, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    shift = [inside - utcnow()]
    run = await start_alerter(database_url, js, env, clock=lambda: utcnow() + shift[0], timings=TIMINGS)
    control = ControlResponder(run.alerter, Env({}), session=run.session)
    await control.start(nc)
    try:
        window = MonthlyWindow(
            weekdays=("First Sunday",), start="02:00", end="04:00", timezone="Europe/Berlin"
        )
        request = SilenceCreateRequest(
            silence=SilenceSpec(
                kind="maintenance", reason="monthly reindex", author="ops", models=("llama*",), monthly=window
            )
        )
        msg = await nc.request(subjects.alerter_silence_create(), msgspec.json.encode(request), timeout=5)
        reply = msgspec.json.decode(msg.data, type=SilenceReply)
        assert reply.status == "ok", reply.error
        (record,) = reply.silences
        assert record.monthly == MonthlyWindow(
            weekdays=("first sun",), start="02:00", end="04:00", timezone="Europe/Berlin"
        )
        assert record.active

        at = inside.astimezone(UTC)
        # Two hosts: a lone point of a second model on llama's host would hold its message
        # (merging.py) longer than this test waits.
        await publish(js, violation(1, at=at), violation(2, model="qwen2:7b", host="gpu-2", at=at))
        await eventually(lambda: len(box.messages) >= 1, what="the qwen message")
        # Every group flushed since, and the qwen message is the only one any flush planned.
        seen = run.store.clock()
        await eventually(
            lambda: all_flushed_after(run.pool, seen, TIMINGS.group_interval), what="later flushes"
        )
        assert sum((await planned(run.pool)).values()) == 1
        assert len(box.messages) == 1
        assert "qwen2:7b" in box.messages[0]["Subject"]
        muted = await run.pool.fetchval("SELECT muted_by FROM alerter_alerts WHERE model = 'llama3.1:8b'")
        assert muted == record.id

        # 04:30 in Berlin: the window has closed, so the held-back notification goes out (the
        # jump of the clock may also send qwen's reminder first: its repeat interval has passed).
        shift[0] += timedelta(hours=2)
        await eventually(
            lambda: any("llama3.1:8b" in m["Subject"] for m in box.messages[1:]),
            what="the llama message once the window closed",
        )
        body = msgspec.json.encode(SilenceListRequest())
        listed = msgspec.json.decode(
            (await nc.request(subjects.alerter_silence_list(), body, timeout=5)).data, type=SilenceReply
        )
        assert [(s.id, s.active, s.monthly) for s in listed.silences] == [(record.id, False, record.monthly)]
    finally:
        await control.stop()
        await run.close()
        smtp.stop()


async def test_an_incident_action_that_postgres_breaks_for_a_deadlock_is_tried_again(
    database_url: str,
) -> None:
    """Forced, not hoped for: a third transaction holds the incident's violation, waits until the
    acknowledgement (which holds the incident) waits on it, then asks for the incident. Postgres
    breaks the cycle by aborting the acknowledgement (its deadlock check runs first: the third
    one's is set far later); the person still gets "ok"."""
    run = await start_alerter(database_url, None, {})
    control = ControlResponder(run.alerter, Env({}), session=run.session)
    try:
        ev = violation(0, rule="CUSUM")
        await run.store.ingest([ev], [], None)
        incident_id = await run.pool.fetchval(
            "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", ev.episode_id
        )
        assert incident_id is not None
        async with run.pool.acquire() as other:
            tx = other.transaction()
            await tx.start()
            try:
                await other.execute("SET LOCAL deadlock_timeout = '20s'")
                await other.execute(
                    "SELECT 1 FROM alerter_alerts WHERE episode_id = $1 FOR UPDATE", ev.episode_id
                )
                request = IncidentActionRequest(incident_id=incident_id, action="acknowledge", by="ana")
                action = asyncio.ensure_future(control.on_incident(request))

                async def action_waits() -> bool:
                    waiting = await run.pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                    return int(waiting) >= 1

                await eventually(action_waits, what="the acknowledgement waiting on the violation")
                # The acknowledgement is the one aborted: this transaction gets the incident.
                await other.execute("SELECT 1 FROM alerter_incidents WHERE id = $1 FOR UPDATE", incident_id)
            finally:
                await tx.rollback()
            reply = await asyncio.wait_for(action, 30)
        assert reply.status == "ok", reply.error
        assert reply.incident is not None
        assert reply.incident.state == "acknowledged"
        acked = await run.pool.fetchval(
            "SELECT acknowledged_by FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
        )
        assert acked == "ana"
    finally:
        await run.close()


# A trigger, for the test only, that makes a silence's INSERT or UPDATE take one more lock once it
# holds its table: a transaction holding that lock and then asking for the table is a deadlock.
GATE = """
CREATE TABLE test_gate (id int);
INSERT INTO test_gate VALUES (1);
CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM 1 FROM test_gate FOR UPDATE; RETURN NEW; END $$;
CREATE TRIGGER test_gate BEFORE INSERT OR UPDATE ON alerter_silences
FOR EACH ROW EXECUTE FUNCTION test_gate();
"""


@pytest.mark.parametrize("change", ["create", "expire"])
async def test_a_silence_change_that_postgres_breaks_for_a_deadlock_is_tried_again(
    database_url: str, change: str
) -> None:
    """As an incident action is: forced, not hoped for. A third transaction holds the lock the
    silence's statement will ask for once it holds the silences table, waits until it does, then
    asks for the table. Postgres breaks the cycle by aborting the silence's statement (its
    deadlock check runs first); the person still gets "ok", the change made once."""
    run = await start_alerter(database_url, None, {})
    control = ControlResponder(run.alerter, Env({}), session=run.session)
    until = utcnow() + timedelta(hours=1)
    try:
        first = await control.on_silence_create(SilenceCreateRequest(silence=spec(ends_at=until)))
        assert first.status == "ok", first.error
        await run.pool.execute(GATE)
        deadlocks = await run.pool.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        async with run.pool.acquire() as other:
            tx = other.transaction()
            await tx.start()
            try:
                await other.execute("SET LOCAL deadlock_timeout = '20s'")
                await other.execute("SELECT 1 FROM test_gate FOR UPDATE")
                if change == "create":
                    asked = control.on_silence_create(SilenceCreateRequest(silence=spec(ends_at=until)))
                else:
                    asked = control.on_silence_expire(SilenceExpireRequest(id=first.silences[0].id))
                action = asyncio.ensure_future(asked)

                async def action_waits() -> bool:
                    waiting = await run.pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                    return int(waiting) >= 1

                await eventually(action_waits, what="the silence's statement waiting on the gate")
                # The silence's statement is the one aborted: this transaction gets the table.
                await other.execute("LOCK TABLE alerter_silences IN SHARE MODE")
            finally:
                await tx.rollback()
            reply = await asyncio.wait_for(action, 30)
        assert reply.status == "ok", reply.error

        async def deadlocked() -> bool:
            now = await run.pool.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
            return int(now) > int(deadlocks)

        await eventually(deadlocked, what="Postgres counting the deadlock it broke")
        rows = await run.pool.fetch("SELECT id, expired_at FROM alerter_silences ORDER BY created_at")
        if change == "create":
            assert len(rows) == 2
            assert reply.silences[0].id == rows[1]["id"]
        else:
            assert len(rows) == 1
            assert rows[0]["expired_at"] is not None
            assert not reply.silences[0].active
    finally:
        await run.close()
