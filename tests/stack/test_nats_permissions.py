"""The embedded nats-server's per-service users (llmscope.proto.permissions): the prober's user
publishes telemetry and watches the model switches, and the server refuses it a violation, a
stream deletion and the alerter's control subjects."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from llmscope.bus.connection import _inbox_prefix, connect, subscriptions_in_place
from llmscope.bus.kv import open_bucket, watch_bucket
from llmscope.bus.layout import apply, layout, prepare
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, ensure_streams
from llmscope.proto import codec, permissions, subjects
from llmscope.proto.switches import ModelSwitch, ModelSwitches, model_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually
from tests.simulator.harness import running_sim

PASSWORDS = {user: f"pw-{user}" for user in permissions.USERS}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    nats = EmbeddedNats(
        tmp_path / "nats", free_port(), users=PASSWORDS, permissions=permissions.service_permissions()
    )
    await asyncio.to_thread(nats.start)
    try:
        yield nats
    finally:
        await asyncio.to_thread(nats.stop)


class Client:
    """A connection as one user, keeping the errors the server sent it."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors


async def _as(server: EmbeddedNats, user: str) -> Client:
    errors: list[str] = []
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    await nc.connect(
        server.url_for(user),
        inbox_prefix=permissions.inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return Client(nc, errors)


def _violation_seen(client: Client, what: str, subject: str) -> bool:
    # nats-py lower-cases the server's -ERR line.
    wanted = f'permissions violation for {what} to "{subject}"'.lower()
    return any(wanted in e for e in client.errors)


async def test_the_probers_user_publishes_telemetry_and_nothing_else(server: EmbeddedNats) -> None:
    operator = await connect(server.url_for(permissions.OPERATOR), "test-operator", give_up_after=10)
    prober = await _as(server, permissions.PROBER)
    try:
        js = operator.jetstream()
        await ensure_streams(js, BusSettings())
        models = await open_bucket(js, subjects.MODELS_BUCKET, description="switches")

        # Telemetry: stored, acknowledged by JetStream on the prober's own inbox.
        pjs = prober.nc.jetstream(timeout=2)
        ack = await pjs.publish(subjects.telemetry("ollama", "m"), b"{}", headers={"Nats-Msg-Id": "t1"})
        assert ack.stream == subjects.STREAM_TELEMETRY
        assert (await pjs.stream_info(subjects.STREAM_TELEMETRY)).config.name == subjects.STREAM_TELEMETRY

        # The model switches reach the prober's watcher (an ordered consumer of the bucket).
        switches = ModelSwitches()
        stop = asyncio.Event()
        watching = asyncio.create_task(
            watch_bucket(await pjs.key_value(subjects.MODELS_BUCKET), switches.apply, stop)
        )
        switch = ModelSwitch(provider="ollama", model="m", enabled=False)
        await models.put(model_key("ollama", "m"), msgspec.json.encode(switch))
        await eventually(lambda: not switches.enabled("ollama", "m"), within=20)
        stop.set()
        await watching

        # A forged violation: refused by the server, never stored.
        forged = subjects.violations("ollama", "m", "spike")
        with pytest.raises(NatsTimeoutError):
            await pjs.publish(forged, b"{}", headers={"Nats-Msg-Id": "v1"})
        await eventually(lambda: _violation_seen(prober, "publish", forged), within=10)
        assert (await js.stream_info(subjects.STREAM_VIOLATIONS)).state.messages == 0

        # Deleting (or changing) a stream: refused; the stream and its message are still there.
        with pytest.raises(NatsTimeoutError):
            await pjs.delete_stream(subjects.STREAM_TELEMETRY)
        delete = f"$JS.API.STREAM.DELETE.{subjects.STREAM_TELEMETRY}"
        await eventually(lambda: _violation_seen(prober, "publish", delete), within=10)
        assert (await js.stream_info(subjects.STREAM_TELEMETRY)).state.messages == 1

        # The alerter's control subjects and everyone's replies are not the prober's to read.
        for subject in (subjects.alerter_silence_list(), "_INBOX.>", f"{permissions.inbox_prefix('api')}.>"):
            await prober.nc.subscribe(subject)
            await prober.nc.flush()
            await eventually(functools.partial(_violation_seen, prober, "subscription", subject), within=10)
    finally:
        await prober.nc.close()
        await operator.close()


async def test_each_service_user_does_what_it_did_with_one_user(server: EmbeddedNats) -> None:
    """Streams and buckets as the setup user makes them, then used by the services' users;
    control requests answered across users."""
    setup = await connect(server.url_for(permissions.SETUP), "test-setup", give_up_after=10)
    api = await connect(server.url_for(permissions.API), "test-api", give_up_after=10)
    alerter = await connect(server.url_for(permissions.ALERTER), "test-alerter", give_up_after=10)
    engine = await connect(server.url_for(permissions.SPC_ENGINE), "test-engine", give_up_after=10)
    try:
        await apply(setup.jetstream(), layout(BusSettings(), partitions=DEFAULT_TELEMETRY_PARTITIONS))
        for nc in (api, alerter, engine):  # what a service with LLMSCOPE_MANAGE_STREAMS=false does
            await prepare(nc.jetstream(), BusSettings(manage_streams=False), None)
        await open_bucket(api.jetstream(), subjects.MODELS_BUCKET, description="switches")
        charts = await open_bucket(engine.jetstream(), subjects.SPC_CHARTS_BUCKET, description="charts")
        await charts.put("k", b"v")
        state = await open_bucket(engine.jetstream(), subjects.SPC_STATE_BUCKET, description="state")
        await state.put("k", b"s")

        async def answer(msg: object) -> None:
            await msg.respond(b"done")  # type: ignore[attr-defined]

        await alerter.subscribe(
            subjects.alerter_silence_list(), queue=subjects.ALERTER_CONTROL_QUEUE, cb=answer
        )
        await engine.subscribe(subjects.spc_rebaseline(), cb=answer)
        await subscriptions_in_place(alerter)
        await subscriptions_in_place(engine)
        for subject in (subjects.alerter_silence_list(), subjects.spc_rebaseline()):
            assert (await api.request(subject, b"{}", timeout=5)).data == b"done"
        ack = await engine.jetstream().publish(
            subjects.violations("ollama", "m", "spike"), b"{}", headers={"Nats-Msg-Id": "v"}
        )
        assert ack.stream == subjects.STREAM_VIOLATIONS
        assert (await (await api.jetstream().key_value(subjects.SPC_CHARTS_BUCKET)).get("k")).value == b"v"
        # What the alerter learns from the API over the bus (it reads none of the API's tables):
        # people's actions on violations, the settings bucket, telemetry by request/reply.
        ack = await api.jetstream().publish(
            subjects.violation_actions("ollama", "resolved"), b"{}", headers={"Nats-Msg-Id": "a"}
        )
        assert ack.stream == subjects.STREAM_VIOLATION_ACTIONS
        actions = await alerter.jetstream().pull_subscribe(
            subjects.VIOLATION_ACTIONS_ALL, "alerter-actions", stream=subjects.STREAM_VIOLATION_ACTIONS
        )
        [action] = await actions.fetch(1, timeout=5)
        await action.ack()
        await (await api.jetstream().key_value(subjects.SETTINGS_BUCKET)).put("k", b"1")
        assert (await (await alerter.jetstream().key_value(subjects.SETTINGS_BUCKET)).get("k")).value == b"1"
        # ... while the engine, which has no use for the channel secrets in it, cannot read it.
        with pytest.raises(NatsTimeoutError):
            await (await engine.jetstream(timeout=2).key_value(subjects.SETTINGS_BUCKET)).get("k")
        await api.subscribe(subjects.api_telemetry_context(), queue=subjects.API_CONTROL_QUEUE, cb=answer)
        await subscriptions_in_place(api)
        assert (await alerter.request(subjects.api_telemetry_context(), b"{}", timeout=5)).data == b"done"
        # The live notices one API process sends to every API process's tabs.
        notices = await api.subscribe(subjects.api_live())
        await subscriptions_in_place(api)
        await api.publish(subjects.api_live(), b"{}")
        assert (await notices.next_msg(timeout=10)).data == b"{}"
        # None of them creates, changes or deletes a stream: none may.
        for nc in (api, alerter, engine):
            sjs = nc.jetstream(timeout=2)
            with pytest.raises(NatsTimeoutError):
                await sjs.delete_stream(subjects.STREAM_VIOLATIONS)
            with pytest.raises(NatsTimeoutError):
                await sjs.add_stream(name="FORGED", subjects=["forged.>"])
            with pytest.raises(NatsTimeoutError):
                await ensure_streams(sjs, BusSettings(violations_max_age_s=60))
        assert (await api.jetstream().stream_info(subjects.STREAM_VIOLATIONS)).state.messages == 1
        info = await setup.jetstream().stream_info(subjects.STREAM_VIOLATIONS)
        assert info.config.max_age == BusSettings().violations_max_age_s
    finally:
        for nc in (api, alerter, engine, setup):
            await nc.close()


def test_the_readme_lists_every_allowed_subject() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("The embedded NATS's users") :]
    lines = table.splitlines()[2:10]
    rows = {line.split("|")[1].strip(" `"): line for line in lines if line.startswith("| `")}
    for user, allowed in permissions.service_permissions().items():
        for subject in (*allowed.publish, *allowed.subscribe):
            # The prober's CONSUMER.CREATE pair is written once, "(and `.>`)".
            pair = "CONSUMER.CREATE" in subject and subject.endswith(".>")
            shown = subject.removesuffix(".>") if pair else subject
            assert f"`{shown}`" in rows[user], (user, subject)
        assert ("replies to requests it received" in rows[user]) == allowed.allow_responses, user
        for subject in allowed.deny_publish:
            assert f"`{subject}`" in table[: table.index("To run a command")], (user, subject)


def test_a_client_reads_replies_on_its_users_inbox_and_a_token_stays_out_of_subjects() -> None:
    assert _inbox_prefix(["nats://spc-engine:pw@127.0.0.1:4222"]) == "_INBOX.spc-engine"
    assert _inbox_prefix(["nats://127.0.0.1:4222", "nats://prober:p%40w@h:4222"]) == "_INBOX.prober"
    assert _inbox_prefix(["nats://s3cret-token@127.0.0.1:4222"]) == "_INBOX"
    assert _inbox_prefix(["127.0.0.1:4222"]) == "_INBOX"


async def test_the_prober_runs_as_its_user_once_others_made_the_streams(server: EmbeddedNats) -> None:
    """The prober under ``up`` (LLMSCOPE_PROBER_MANAGE_STREAMS=false): it waits for the streams
    instead of making them, then publishes without one permissions violation."""
    async with running_sim() as sim:
        env = {
            **os.environ,
            "NATS_URL": server.url_for(permissions.PROBER),
            "LLMSCOPE_PROBER_MANAGE_STREAMS": "false",
            "LLMSCOPE_TARGETS": f"ollama,{sim.url},fast-a:1b",
            "LLMSCOPE_PROBER_INTERVAL_S": "0.1",
            "LLMSCOPE_PROBER_HEALTH_PORT": "0",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.prober", env=env, stderr=asyncio.subprocess.PIPE
        )
        operator = await connect(server.url_for(permissions.OPERATOR), "test-operator", give_up_after=10)
        try:
            js = operator.jetstream()
            assert proc.stderr is not None
            async with asyncio.timeout(30):
                while b"NATS not ready" not in await proc.stderr.readline():
                    assert proc.returncode is None
            with pytest.raises(NotFoundError):  # the prober waits: it made no stream
                await js.stream_info(subjects.STREAM_TELEMETRY)
            await ensure_streams(js, BusSettings())
            await open_bucket(js, subjects.MODELS_BUCKET, description="switches")
            sub = await js.subscribe(subjects.TELEMETRY_ALL, ordered_consumer=True)
            event = codec.decode_as((await sub.next_msg(timeout=30)).data, TelemetryEvent)
            assert event.target == "ollama/fast-a:1b"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await operator.close()
    assert "Violation" not in (server.store_dir / "nats-server.log").read_text()


async def test_a_refused_subject_is_logged_once_as_an_error_and_the_connection_stays(
    server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmscope.bus")
    nc = await connect(server.url_for(permissions.PROBER), "refused", give_up_after=10)
    try:
        forged = subjects.violations("ollama", "m", "spike")
        for _ in range(3):
            await nc.publish(forged, b"{}")
            await nc.flush()

        def refusals() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "NATS refused a subject to this user"]

        await eventually(lambda: len(refusals()) == 1, within=10, what="the refusal's error line")
        [line] = refusals()
        assert line.levelname == "ERROR"
        assert nc.is_connected
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    finally:
        await nc.close()


def test_a_renamed_chart_bucket_is_the_engines_to_write() -> None:
    engine = permissions.service_permissions("team_charts")[permissions.SPC_ENGINE]
    assert "$KV.team_charts.>" in engine.publish
    assert f"$KV.{subjects.SPC_CHARTS_BUCKET}.>" not in engine.publish
    renamed = permissions.service_permissions("team_charts", "team_state")
    assert "$KV.team_state.>" in renamed[permissions.SPC_ENGINE].publish
    assert f"$KV.{subjects.SPC_STATE_BUCKET}.>" not in renamed[permissions.SPC_ENGINE].publish


def test_only_the_engine_may_write_its_state_bucket() -> None:
    for user, allowed in permissions.service_permissions().items():
        writes = f"$KV.{subjects.SPC_STATE_BUCKET}.>" in allowed.publish
        assert writes == (user == permissions.SPC_ENGINE), user
