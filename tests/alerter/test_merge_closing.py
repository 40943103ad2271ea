"""An incident merged into its host's cascade after both had paged: the absorbed incident's
threads get a closing message naming and linking the survivor, its PagerDuty alert is resolved and
its Alertmanager alerts end (``endsAt``), through the usual claim, retry and record path.

Real local servers: aiosmtpd, a webhook sink, a PagerDuty Events v2 server that checks each event
(and refuses the first resolve with a 503, so the closing message is seen retried), Slack's
chat.postMessage (threads checked) and an Alertmanager v2 alerts endpoint (postableAlerts
checked). Postgres with a hand-moved clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web

from llmscope.alerter.config import AlerterFile, Timings
from llmscope.alerter.migrate import migrate
from llmscope.alerter.retry import RetryPolicy
from llmscope.alerter.service import Alerter, AlerterOptions
from llmscope.alerter.store import Store
from llmscope.config.env import Env
from llmscope.proto.violation import ViolationEvent
from tests.alerter.alertmanager_api import FakeAlertmanager
from tests.alerter.factories import LOOPBACK_ALLOWED, T0, HttpSink, Mailbox, smtp_server, violation
from tests.alerter.test_chat_channels import TOKEN, SlackApi
from tests.alerter.test_merging import A, B, Clock, S

URL = "http://scope.test"


class PagerDuty:
    """Events API v2 as PagerDuty checks it; the first ``resolve`` is answered 503 (retryable)."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refused_resolves = 0
        self.sink = HttpSink(self._answer)

    async def _answer(self, request: web.Request, _: int) -> web.StreamResponse:
        body = await request.json()
        action = body.get("event_action")
        if body.get("routing_key") != "R0UTING" or action not in ("trigger", "resolve"):
            return web.json_response({"status": "invalid event"}, status=400)
        if not body.get("dedup_key"):
            return web.json_response({"status": "invalid event"}, status=400)
        if action == "trigger" and not all(body["payload"].get(k) for k in ("summary", "source", "severity")):
            return web.json_response({"status": "invalid event"}, status=400)
        if action == "resolve" and self.refused_resolves == 0:
            self.refused_resolves += 1
            return web.json_response({"status": "unavailable"}, status=503)
        self.accepted.append(body)
        return web.json_response({"status": "success", "dedup_key": body["dedup_key"]}, status=202)


@dataclass
class Sinks:
    mail: Mailbox
    hook: HttpSink
    pd: PagerDuty
    slack: SlackApi

    def hooks(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.hook.requests]


@pytest.fixture
async def sinks() -> AsyncIterator[tuple[Sinks, dict[str, str]]]:
    box = Mailbox()
    smtp = smtp_server(box)
    hook, pd, slack = HttpSink(), PagerDuty(), SlackApi()
    for s in (hook, pd.sink, slack.sink):
        await s.start()
    env = {
        **LOOPBACK_ALLOWED,
        "LLMSCOPE_SMTP_HOST": "127.0.0.1",
        "LLMSCOPE_SMTP_PORT": str(smtp.port),
        "LLMSCOPE_SMTP_SECURITY": "none",
        "LLMSCOPE_SMTP_FROM": "scope@example.com",
        "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
        "LLMSCOPE_WEBHOOK_URL": hook.url + "/hook",
        "LLMSCOPE_PAGERDUTY_ROUTING_KEY": "R0UTING",
        "LLMSCOPE_PAGERDUTY_EVENTS_URL": pd.sink.url + "/v2/enqueue",
        "LLMSCOPE_SLACK_BOT_TOKEN": TOKEN,
        "LLMSCOPE_SLACK_CHANNEL": "C0ONCALL",
        "LLMSCOPE_SLACK_API_URL": slack.sink.url + "/api",
    }
    try:
        yield Sinks(box, hook, pd, slack), env
    finally:
        smtp.stop()
        for s in (hook, pd.sink, slack.sink):
            await s.stop()


@dataclass
class Paged:
    """Two incidents of host gpu-7, one per model (A's CUSUM, then B's one-point SPIKE), that
    both paged every channel of their routes at T0+31 s; B's point is sustained at T0+62 s, when
    the incidents merge (the survivor is A's, told first)."""

    pool: asyncpg.Pool
    store: Store
    alerter: Alerter
    clock: Clock
    a: ViolationEvent
    b: ViolationEvent
    first: str
    second: str

    async def dispatch(self, at: datetime) -> None:
        self.clock.now = at
        await self.alerter.dispatch_once()
        await self.alerter.drain_deliveries(grace=20)

    async def incident_of(self, episode_id: str) -> str:
        return str(
            await self.pool.fetchval(
                "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", episode_id
            )
        )


@asynccontextmanager
async def both_paged(
    database_url: str, env: dict[str, str], file: AlerterFile | None = None
) -> AsyncIterator[Paged]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    clock = Clock(T0)
    store = Store(pool, instance="a", clock=clock, incident_window=300, sustain_after=60)
    session = aiohttp.ClientSession()
    alerter = Alerter(
        store,
        env=Env(env),
        session=session,
        publisher=None,
        options=AlerterOptions(
            public_url=URL,
            settings_refresh_s=0,
            config_file=file,
            timings=Timings(group_wait=30, group_interval=300, repeat_interval=3600),
            retry=RetryPolicy(initial=0.05, max_delay=0.2, jitter=0.0),
        ),
    )
    try:
        a = violation(1, model=A, host="gpu-7", rule="CUSUM", at=T0)
        b = violation(2, model=B, host="gpu-7", rule="SPIKE", at=T0 + 2 * S)
        runtime = await alerter.runtime()
        await store.ingest([a], runtime.routes, runtime.allowed_rules)
        clock.now = T0 + 2 * S
        await store.ingest([b], runtime.routes, runtime.allowed_rules)
        paged = Paged(pool, store, alerter, clock, a, b, "", "")
        paged.first, paged.second = (
            await paged.incident_of(a.episode_id),
            await paged.incident_of(b.episode_id),
        )
        assert paged.first != paged.second
        # The second model's page was held (its lone point); as if that hold had been cut short
        # (the gap the closing message closes: both incidents paged before the merge), its group
        # flushes with the first's.
        await pool.execute("UPDATE alerter_incidents SET held_until = NULL WHERE id = $1", paged.second)
        await pool.execute(
            "UPDATE alerter_groups SET next_flush_at = $2 WHERE labels::text LIKE '%' || $1 || '%'",
            paged.second,
            T0 + 31 * S,
        )
        await paged.dispatch(T0 + 31 * S)
        yield paged
    finally:
        await session.close()
        await pool.close()


async def test_both_paged_then_merged_the_absorbed_threads_close_naming_the_survivor(
    database_url: str, sinks: tuple[Sinks, dict[str, str]]
) -> None:
    out, env = sinks
    async with both_paged(database_url, env) as p:
        first, second, pool, store = p.first, p.second, p.pool, p.store
        assert sorted(h["incident_id"] for h in out.hooks()) == sorted([first, second])
        assert len(out.mail.messages) == 2
        assert sorted(e["dedup_key"] for e in out.pd.accepted) == sorted([first, second])
        roots = {inc: await store.thread_get("slack", f"incident:{inc}") for inc in (first, second)}
        assert None not in roots.values()
        assert len(set(roots.values())) == 2

        await p.dispatch(T0 + 62 * S)  # B's point is sustained: the incidents merge
        survivor = await p.incident_of(p.b.episode_id)
        assert survivor == await p.incident_of(p.a.episode_id)
        absorbed = second if survivor == first else first
        assert (
            await pool.fetchval("SELECT merged_into FROM alerter_incidents WHERE id = $1", absorbed)
            == survivor
        )
        link = f"{URL}/incidents/{survivor}"

        # webhook: the closing message, about the absorbed incident, naming the survivor
        closing = out.hooks()[2:]
        assert len(closing) == 1
        assert (closing[0]["reason"], closing[0]["incident_id"]) == ("merged", absorbed)
        assert (closing[0]["merged_into"], closing[0]["merged_into_url"]) == (survivor, link)
        assert f"merged into incident {survivor}" in closing[0]["title"]
        assert link in closing[0]["text"]
        # PagerDuty: the absorbed incident's alert resolved (after one refused try)
        assert out.pd.refused_resolves == 1
        assert out.pd.accepted[2:] == [
            {"event_action": "resolve", "dedup_key": absorbed, "routing_key": "R0UTING"}
        ]
        # email: a reply in the absorbed incident's thread
        mail: EmailMessage = out.mail.messages[2]
        assert len(out.mail.messages) == 3
        root = next(m for m in out.mail.messages[:2] if absorbed in str(m.get_body(("plain",))))
        assert mail["In-Reply-To"] == root["Message-ID"]
        assert f"merged into incident {survivor}" in mail["Subject"]
        body = mail.get_body(("plain",))
        assert body is not None
        assert link in body.get_content()
        # Slack: in the absorbed incident's thread, linking the survivor
        post = out.slack.bodies()[-1]
        assert len(out.slack.bodies()) == 3
        assert post["thread_ts"] == roots[absorbed]
        assert link in json.dumps(post)

        # recorded like every message: sent, with its attempts (PagerDuty's two)
        rows = await pool.fetch(
            "SELECT channel, status, attempts FROM alerter_notifications WHERE reason = 'merged'"
        )
        assert sorted((r["channel"], r["status"], r["attempts"]) for r in rows) == [
            ("email", "sent", 1),
            ("pagerduty", "sent", 2),
            ("slack", "sent", 1),
            ("webhook", "sent", 1),
        ]
        # once: the absorbed group is closed; the survivor's group goes on in its own threads
        await p.dispatch(T0 + 331 * S)
        later = out.hooks()[3:]
        assert [h["incident_id"] for h in later] == [survivor]
        assert sorted(later[0]["cascade_models"]) == [A, B]
        assert [p.get("thread_ts") for p in out.slack.bodies()[3:]] == [roots[survivor]]


async def test_a_channel_without_resolved_messages_gets_no_merge_closing(
    database_url: str, sinks: tuple[Sinks, dict[str, str]]
) -> None:
    """The closing message ends the absorbed incident as a resolution would: a channel with
    ``send_resolved: false`` (PagerDuty's too: its alert is left for people to resolve) gets none,
    while one beside it that takes resolutions does."""
    out, env = sinks
    env = {k: v for k, v in env.items() if not k.startswith(("LLMSCOPE_PAGERDUTY", "LLMSCOPE_SLACK"))}
    env["PD_KEY"] = "R0UTING"
    file = msgspec.convert(
        {
            "channels": [
                {
                    "name": "quiet-hook",
                    "kind": "webhook",
                    "url": out.hook.url + "/quiet",
                    "send_resolved": False,
                },
                {
                    "name": "quiet-pager",
                    "kind": "pagerduty",
                    "routing_key_env": "PD_KEY",
                    "events_url": out.pd.sink.url + "/v2/enqueue",
                    "send_resolved": False,
                },
            ]
        },
        AlerterFile,
    )

    def paths() -> list[str]:
        return [path for _, _, path in out.hook.requests]

    async with both_paged(database_url, env, file) as p:
        runtime = await p.alerter.runtime()
        assert {n: v.send_resolved for n, v in runtime.channels.items()} == {
            "email": True,
            "webhook": True,
            "quiet-hook": False,
            "quiet-pager": False,
        }
        # both incidents paged every channel
        assert sorted(paths()) == ["/hook", "/hook", "/quiet", "/quiet"]
        assert [e["event_action"] for e in out.pd.accepted] == ["trigger", "trigger"]
        assert len(out.mail.messages) == 2

        await p.dispatch(T0 + 62 * S)  # the incidents merge
        merged = await p.pool.fetch(
            "SELECT channel, status FROM alerter_notifications WHERE reason = 'merged'"
        )
        assert sorted((r["channel"], r["status"]) for r in merged) == [("email", "sent"), ("webhook", "sent")]
        assert paths()[4:] == ["/hook"]
        assert json.loads(out.hook.requests[4][1])["reason"] == "merged"
        assert len(out.mail.messages) == 3
        # PagerDuty was neither sent the resolve nor even tried (its first resolve would be refused)
        assert (out.pd.refused_resolves, len(out.pd.accepted)) == (0, 2)
        # the absorbed group closed all the same: nothing is sent to anyone later on its behalf
        assert (
            await p.pool.fetchval(
                "SELECT count(*) FROM alerter_groups WHERE merged_into IS NOT NULL AND state <> 'closed'"
            )
            == 0
        )


async def test_only_the_absorbed_incident_had_a_slack_thread_its_closing_replies_in_it(
    database_url: str, sinks: tuple[Sinks, dict[str, str]]
) -> None:
    """A's route does not post to Slack, B's does: only the incident merged away has a Slack
    thread. Its closing message replies in that thread (it once started a new top-level post, the
    thread having moved to the survivor), and the survivor's updates carry on in it."""
    out, env = sinks
    env = {k: v for k, v in env.items() if not k.startswith(("LLMSCOPE_PAGERDUTY", "LLMSCOPE_SMTP"))}
    file = msgspec.convert(
        {
            "routes": [
                {"name": "quiet-model", "channels": ["webhook"], "models": [A]},
                {"name": "chatty-model", "channels": ["slack", "webhook"], "models": [B]},
            ]
        },
        AlerterFile,
    )
    async with both_paged(database_url, env, file) as p:
        assert sorted(h["incident_id"] for h in out.hooks()) == sorted([p.first, p.second])
        (root_post,) = out.slack.bodies()
        assert "thread_ts" not in root_post
        root = await p.store.thread_get("slack", f"incident:{p.second}")
        assert root is not None
        assert await p.store.thread_get("slack", f"incident:{p.first}") is None

        await p.dispatch(T0 + 62 * S)  # the incidents merge; A's, told first, survives
        assert await p.incident_of(p.b.episode_id) == p.first
        closing = out.slack.bodies()[1:]
        assert len(closing) == 1
        assert closing[0].get("thread_ts") == root  # a reply in B's thread, not a new post
        assert f"merged into incident {p.first}" in closing[0]["text"]
        assert f"{URL}/incidents/{p.first}" in json.dumps(closing[0])
        # the survivor's thread on Slack is the one people follow: B's
        assert await p.store.thread_get("slack", f"incident:{p.first}") == root

        # B's violation, now the survivor's, is news in its route's group: in the same thread
        await p.dispatch(T0 + 92 * S)
        update = out.slack.bodies()[2:]
        assert [u.get("thread_ts") for u in update] == [root]
        assert "Cascade" in update[0]["text"]


@pytest.fixture
async def am() -> AsyncIterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_absorbed_incidents_alertmanager_alerts_end_at_the_merge(
    database_url: str, am: FakeAlertmanager
) -> None:
    """An Alertmanager told the absorbed incident's alerts gets them again with ``endsAt`` (the
    merge) under its labels, not left to expire at its resolve timeout; they fire on under the
    survivor's labels."""
    env = {**LOOPBACK_ALLOWED, "LLMSCOPE_ALERTMANAGER_URL": am.sink.url}
    async with both_paged(database_url, env) as p:
        assert am.rejected == []
        firing = {dict(k)["incident"]: v for k, v in am.alerts.items()}
        assert sorted(firing) == sorted([p.first, p.second])
        assert all(a.ends_at is None for a in firing.values())

        await p.dispatch(T0 + 62 * S)  # the incidents merge; A's survives
        assert am.rejected == []
        (ended,) = am.posts[2:]
        assert [a["labels"]["incident"] for a in ended] == [p.second]
        assert ended[0]["labels"]["model"] == B
        assert ended[0]["annotations"]["merged_into"] == p.first
        assert firing[p.second].ends_at == T0 + 62 * S
        assert firing[p.first].ends_at is None
        rows = await p.pool.fetch(
            "SELECT status, resolved FROM alerter_notifications WHERE reason = 'merged'"
            " AND channel = 'alertmanager'"
        )
        assert [(r["status"], list(r["resolved"])) for r in rows] == [("sent", [p.b.episode_id])]

        # B's violation fires on under the survivor's labels; the absorbed labels are not re-sent
        await p.dispatch(T0 + 331 * S)
        assert am.rejected == []
        now = {tuple(sorted(a["labels"].items())): a for post in am.posts[3:] for a in post}
        assert {(dict(k)["model"], dict(k)["incident"]) for k in now} == {(A, p.first), (B, p.first)}
        assert all("endsAt" not in a for a in now.values())
        assert firing[p.second].ends_at == T0 + 62 * S
        p.clock.now = T0 + 392 * S  # past the re-send period (60 s): only the survivor's alerts
        assert await p.alerter.resend_once() == 1
        again = [a["labels"] for a in am.posts[-1]]
        assert sorted((x["model"], x["incident"]) for x in again) == [(A, p.first), (B, p.first)]
