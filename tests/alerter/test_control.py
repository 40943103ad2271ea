"""The control responder: silence validation (pure) and malformed requests over real NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client as NATS

from llmscope.alerter.control import ControlResponder, InvalidSilence, silence_from_spec
from llmscope.config.env import Env
from llmscope.proto import subjects
from llmscope.proto.control import (
    AlertTestReply,
    IncidentActionReply,
    SilenceReply,
    SilenceSpec,
    WeeklyWindow,
)
from tests.alerter.harness import start_alerter

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
