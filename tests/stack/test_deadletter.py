"""``llmscope deadletter``: a poison event is listed with its reason and, once the cause is fixed,
replayed and stored exactly once; a second replay resends nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from nats.js import JetStreamContext

from llmscope.api.db import create_pool
from llmscope.api.persister import Persister, persister_consumer_options
from llmscope.bus.deadletter import dead_letter_event
from llmscope.bus.publisher import Publisher
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack import deadletter
from llmscope.stack.cli import main as cli
from tests.alerter.harness import eventually
from tests.api.factories import telemetry

FAST = {"backoff": (0.1, 0.2), "max_deliver": 3, "fetch_timeout": 0.2, "batch_size": 20}


@pytest.fixture
async def running(database_url: str, js: JetStreamContext) -> AsyncIterator[tuple[Persister, asyncpg.Pool]]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    persister = Persister(
        pool=pool, js=js, publisher=Publisher(js), options=persister_consumer_options(**FAST)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        yield persister, pool
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await pool.close()


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli, ["deadletter", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.fault
async def test_poison_event_is_listed_then_replayed_once_after_the_fix(
    running: tuple[Persister, asyncpg.Pool],
    js: JetStreamContext,
    nats_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    persister, pool = running
    await pool.execute("ALTER TABLE telemetry ADD CONSTRAINT no_poison CHECK (host <> 'poison')")
    publisher = Publisher(js)
    events = [telemetry(i, host="poison" if i == 2 else "gpu-1") for i in range(5)]
    for ev in events:
        await publisher.publish(subjects.telemetry(ev.provider, ev.model), ev)
    poison = events[2]

    async def settled() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM telemetry") == 4
            and persister.telemetry.dead_lettered == 1
        )

    await eventually(settled, what="four stored, the poison dead-lettered")

    code, out, _ = await run_cli(capsys, "list", "--nats-url", nats_url)
    assert code == 0
    [line] = out.splitlines()
    assert "no_poison" in line
    assert "refused by Postgres" in line
    assert subjects.telemetry(poison.provider, poison.model) in line
    seq = int(line.split()[0])

    code, out, _ = await run_cli(capsys, "show", str(seq), "--json", "--nats-url", nats_url)
    assert code == 0
    shown = json.loads(out)
    assert shown["body"]["id"] == poison.id
    assert shown["body"]["host"] == "poison"
    assert shown["msg_id"] == poison.id  # the original Nats-Msg-Id, recorded by the consumer
    assert shown["source"] == "api-persister"
    assert "no_poison" in shown["reason"]
    code, out, _ = await run_cli(capsys, "show", str(seq), "--nats-url", nats_url)
    assert '"host": "poison"' in out
    assert "reason:" in out
    assert "Nats-Msg-Id" in out

    # Filters that match nothing select nothing; a replay with no selection at all is refused.
    code, out, _ = await run_cli(capsys, "list", "--reason", "no such reason", "--nats-url", nats_url)
    assert (code, out) == (0, "")
    code, _, _ = await run_cli(capsys, "replay", "--nats-url", nats_url)
    assert code == deadletter.USAGE

    # The cause fixed, the replay stores the event; the stream's copy of the poison is still
    # within the duplicate window, so the replay goes out under "<id>.replay".
    await pool.execute("ALTER TABLE telemetry DROP CONSTRAINT no_poison")
    code, out, _ = await run_cli(capsys, "replay", "--reason", "no_poison", "--nats-url", nats_url)
    assert code == 0, out
    assert f"{seq} -> " in out
    assert ": stored" in out
    assert f"Nats-Msg-Id {poison.id}{deadletter.REPLAY_SUFFIX})" in out

    async def stored() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM telemetry WHERE id = $1", poison.id) == 1)

    await eventually(stored, what="the replayed event stored")
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == 5  # counted once

    # Nothing left to replay: a second replay publishes nothing at all.
    before = (await js.stream_info(subjects.STREAM_TELEMETRY)).state.last_seq
    code, out, err = await run_cli(capsys, "replay", "--all", "--nats-url", nats_url)
    assert (code, out) == (0, "")
    assert "replayed 0 of 0" in err
    assert (await js.stream_info(subjects.STREAM_TELEMETRY)).state.last_seq == before
    code, out, _ = await run_cli(capsys, "list", "--nats-url", nats_url)
    assert out == ""
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == 5


@pytest.mark.fault
async def test_a_replay_cut_short_before_the_delete_is_deduplicated(js: JetStreamContext) -> None:
    """Publish done, delete not: the next replay is a duplicate for JetStream, not a second copy."""
    ev = telemetry(7)
    await js.publish(
        subjects.deadletter("test"),
        deadletter_bytes(ev.id, subjects.telemetry(ev.provider, ev.model), ev),
    )
    [dl] = await deadletter.select(js, deadletter.Filters())
    publisher = Publisher(js)
    first = await deadletter.replay_one(js, publisher, dl)
    again = await deadletter.replay_one(js, publisher, dl)  # as if the first had died before deleting
    assert (first.outcome, again.outcome) == ("stored", "already stored")
    assert first.msg_id == again.msg_id == ev.id
    assert (await js.stream_info(subjects.STREAM_TELEMETRY)).state.messages == 1
    assert await deadletter.select(js, deadletter.Filters()) == []


def deadletter_bytes(msg_id: str, subject: str, ev: TelemetryEvent) -> bytes:
    dl = dead_letter_event(
        source="test",
        subject=subject,
        payload=codec.encode(ev),
        reason="test",
        stream_seq=None,
        msg_id=msg_id,
    )
    return codec.encode(dl)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("llmscope.telemetry.v1.>", "llmscope.telemetry.v1.a.b.3", True),
        ("llmscope.telemetry.v1.*.b", "llmscope.telemetry.v1.a.b", True),
        ("llmscope.telemetry.v1.*", "llmscope.telemetry.v1.a.b", False),
        ("llmscope.violations.v1.>", "llmscope.telemetry.v1.a.b", False),
        ("llmscope.telemetry.v1.a.b", "llmscope.telemetry.v1.a.b", True),
    ],
)
def test_subject_filters_use_nats_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert deadletter.subject_matches(pattern, subject) is expected


def test_since_takes_a_duration_or_an_iso_time() -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert deadletter.parse_since("2h", now) == now - timedelta(hours=2)
    assert deadletter.parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
