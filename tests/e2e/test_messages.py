"""What the messages say, end to end: `llmscope up` with a Slack-format sink, a webhook sink, a
plain SMTP server (aiosmtpd) and a GitHub-compatible issue tracker, all local.

Two cases of issue 8's "Done when", each read in the Slack payload, the webhook body and the
email as delivered: an outage of the simulated endpoint (HTTP 503) and its recovery, which also
opens one ticket and closes it with a comment; and a 2x latency shift. Each message must carry
the facts an on-call engineer acts on (what is wrong in the metric's units and how far from the
baseline, since when, the rule in words, the links to the incident and the chart, which must
resolve); an outage also its failure kind, HTTP status, error text, count, duration and last
success, and its resolved message how long it lasted.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from llmscope.alerter.tickets.text import marker_for
from tests.alerter.factories import LOOPBACK_ALLOWED, HttpSink, Mailbox, smtp_server
from tests.alerter.trackers import TOKEN, FakeGitHub
from tests.e2e.stack import RunningStack, llmscope_up, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL = "llama3.1:8b"
T = TypeVar("T")


@dataclass
class Sinks:
    """The local receivers, served from one event loop in a thread of their own."""

    loop: asyncio.AbstractEventLoop
    slack: HttpSink
    hook: HttpSink
    mailbox: Mailbox
    smtp_port: int
    github: FakeGitHub

    def env(self, *, time_scale: float, baseline_n: int) -> dict[str, str]:
        """The demo stack at test pace, one model, every channel and the tracker on these sinks."""
        return {
            "LLMSCOPE_SIM_MODELS": f"{MODEL}@sim-gpu-1",
            "LLMSCOPE_SIM_SEED": "11",
            "LLMSCOPE_SIM_TIME_SCALE": str(time_scale),
            "LLMSCOPE_PROBER_INTERVAL_S": "0.05",
            "LLMSCOPE_SPC_BASELINE_N": str(baseline_n),
            "LLMSCOPE_ALERTER_GROUP_WAIT_S": "1",
            "LLMSCOPE_ALERTER_GROUP_INTERVAL_S": "1",
            "LLMSCOPE_ANALYSIS_DELAY_S": "1",
            "LLMSCOPE_SLACK_WEBHOOK_URL": f"{self.slack.url}/slack",
            "LLMSCOPE_WEBHOOK_URL": f"{self.hook.url}/hook",
            "LLMSCOPE_SMTP_HOST": "127.0.0.1",
            "LLMSCOPE_SMTP_PORT": str(self.smtp_port),
            "LLMSCOPE_SMTP_SECURITY": "none",
            "LLMSCOPE_SMTP_FROM": "llmscope@example.com",
            "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
            "LLMSCOPE_TICKETS_TRACKER": "github",
            "LLMSCOPE_TICKETS_URL": self.github.url,
            "LLMSCOPE_TICKETS_PROJECT": "acme/llm",
            "LLMSCOPE_TICKETS_TOKEN": TOKEN,
            "LLMSCOPE_TICKETS_WAIT_S": "1",
            **LOOPBACK_ALLOWED,  # every receiver is on loopback, which channels refuse by default
        }

    def slack_messages(self) -> list[str]:
        """Every Slack payload, as the text a reader sees (all its strings, the buttons' URLs too)."""
        return [_strings(json.loads(body)) for _, body, _ in list(self.slack.requests)]

    def webhooks(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in list(self.hook.requests)]

    def emails(self) -> list[tuple[str, str]]:
        """(subject, plain-text body) of every email."""
        out = []
        for msg in list(self.mailbox.messages):
            part = msg.get_body(("plain",))
            assert isinstance(part, EmailMessage)
            out.append((str(msg["Subject"]), part.get_content()))
        return out


def _strings(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_strings(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_strings(v) for v in value)
    return ""


@contextmanager
def sinks() -> Iterator[Sinks]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    slack, hook, github, mailbox = HttpSink(), HttpSink(), FakeGitHub(), Mailbox()
    controller = smtp_server(mailbox)
    try:
        for server in (slack, hook, github):
            on_loop(server.start())
        yield Sinks(loop, slack, hook, mailbox, controller.port, github)
    finally:
        controller.stop()
        for server in (slack, hook, github):
            on_loop(server.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _violations(client: httpx.Client) -> list[dict[str, Any]]:
    reply = client.get("/api/violations", params={"model": MODEL, "limit": 200})
    if reply.status_code != 200:
        return []
    body = reply.json()
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return items


def _points(client: httpx.Client) -> int:
    reply = client.get("/api/stats/spc", params={"provider": "ollama", "model": MODEL, "hours": 1})
    return len(reply.json().get("points", [])) if reply.status_code == 200 else 0


def _firing(hooks: list[dict[str, Any]], episode: str) -> list[dict[str, Any]]:
    return [n for n in hooks if episode in {f["episode_id"] for f in n["firing"]}]


def _resolved(hooks: list[dict[str, Any]], episode: str) -> list[dict[str, Any]]:
    return [n for n in hooks if episode in {r["episode_id"] for r in n["resolved"]}]


def _naming(texts: list[str], episode: str) -> list[str]:
    """The messages that link the episode's violation page."""
    return [t for t in texts if f"/violations/{episode}" in t]


def _assert_resolves(stack: RunningStack, url: str, contains: str) -> None:
    """A link in a message leads to a dashboard page showing what it names."""
    assert url.startswith(stack.base_url), (url, stack.base_url)
    page = httpx.get(url, params={"key": stack.api_key}, follow_redirects=True, timeout=30)
    assert page.status_code == 200, (url, page.status_code, page.text[:300])
    assert contains in page.text, (url, contains)


def _links(text: str) -> dict[str, str]:
    """The incident and chart links of a message, as its plain text writes them."""
    found = {}
    for key in ("Incident link", "Chart"):
        match = re.search(rf"^{key}:\s+(\S+)[ \t\r]*$", text, re.MULTILINE)
        assert match, f"no {key} line in\n{text}"
        found[key] = match.group(1)
    return found


def _common_facts(text: str, what: str) -> None:
    """The first lines of every firing message: since when, how sure in words, the links."""
    assert re.search(r"Since:\**\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(", text), f"{what}: since\n{text}"
    assert re.search(r"How sure:\**\s+[A-Za-z]", text), f"{what}: the rule in words\n{text}"
    # Parameters are not words: no "k=0.5 h=12.661" nor a bare sigma count.
    assert not re.search(r"\bk=\d|\bh=\d", text), f"{what}: rule parameters\n{text}"
    assert "/incidents/" in text, f"{what}: incident link\n{text}"
    assert "hours=" in text, f"{what}: chart link\n{text}"


OUTAGE_FACTS = (
    (r"down: \d+ failed probes in a row", "what is wrong"),
    (r"http_5xx, HTTP 503", "failure kind and HTTP status"),
    (r"HTTP 503: [^\n]*service unavailable", "the error text"),
    (
        r"\d+ failed probe\(s\) since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+(\.\d+)? (s|min)",
        "count and duration",
    ),
    (r"Last success: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "the last success"),
    (r"consecutive failed probes", "the rule in words"),
)


def test_an_outage_and_its_recovery_in_every_channel_with_one_ticket(data_dir: Path) -> None:
    with sinks() as s:
        # Metric charts never freeze their limits: the availability chart is the only one that
        # speaks, so every message and ticket here is the outage's.
        env = s.env(time_scale=0.01, baseline_n=1_000_000)
        with llmscope_up(data_dir, env) as stack, stack.client() as client:
            wait_for(lambda: _points(client), 90, what=lambda: f"the model probed\n{stack.log()}")

            def availability() -> list[dict[str, Any]]:
                return [v for v in _violations(client) if v["rule"] == "AVAILABILITY"]

            # The first probes may fail while the simulator starts: an episode of its own.
            wait_for(
                lambda: all(v["state"] == "cleared" for v in availability()),
                90,
                what=lambda: f"no AVAILABILITY episode open before the outage\n{stack.log()}",
            )
            before = {v["id"] for v in availability()}
            down = stack.llmscope("sim", "inject", "outage", "--model", MODEL, "--status", "503")
            assert down.returncode == 0, down.stderr
            opened: list[dict[str, Any]] = wait_for(  # type: ignore[assignment]
                lambda: [v for v in availability() if v["id"] not in before],
                90,
                what=lambda: f"an AVAILABILITY violation\n{stack.log()}",
            )
            episode = opened[0]["episode_id"]

            # One firing message per channel, each naming the failure.
            wait_for(
                lambda: _firing(s.webhooks(), episode),
                90,
                what=lambda: f"the outage's webhook\n{stack.log()}",
            )
            wait_for(lambda: _naming(s.slack_messages(), episode), 60, what="the outage's Slack message")
            wait_for(lambda: _naming([b for _, b in s.emails()], episode), 60, what="the outage's email")
            first = _firing(s.webhooks(), episode)[0]
            incident_id = first["incident_id"]
            assert incident_id, first
            slack = _naming(s.slack_messages(), episode)[0]
            subject, mail = next((subj, b) for subj, b in s.emails() if f"/violations/{episode}" in b)
            assert "CRITICAL" in subject, subject
            assert "HTTP 503" in subject, subject
            for what, text in (("webhook", first["text"]), ("slack", slack), ("email", mail)):
                for pattern, fact in OUTAGE_FACTS:
                    assert re.search(pattern, text), f"{what}: {fact} ({pattern!r}) missing in\n{text}"
                _common_facts(text, what)
            links = _links(mail)
            assert links["Incident link"] in slack
            assert links["Incident link"] == first["incident_url"]
            _assert_resolves(stack, links["Incident link"], incident_id)
            _assert_resolves(stack, links["Chart"], MODEL)

            # A critical incident opens one ticket.
            marker = marker_for(incident_id)

            def tickets() -> list[Any]:
                return [i for i in s.github.created() if marker in str(i.body)]

            wait_for(tickets, 90, what=lambda: f"the incident's ticket\n{stack.log()}")

            # Recovery: the episode clears, the incident resolves, every channel says for how long.
            back = stack.llmscope("sim", "inject", "clear")
            assert back.returncode == 0, back.stderr
            wait_for(
                lambda: _resolved(s.webhooks(), episode),
                120,
                what=lambda: f"the resolved webhook\n{stack.log()}",
            )

            def resolved_texts(texts: list[str]) -> list[str]:
                return [t for t in _naming(texts, episode) if "Lasted" in t]

            wait_for(lambda: resolved_texts(s.slack_messages()), 60, what="the resolved Slack message")
            wait_for(lambda: resolved_texts([b for _, b in s.emails()]), 60, what="the resolved email")
            done = _resolved(s.webhooks(), episode)[0]
            resolved_mail = next(
                (subj, b) for subj, b in s.emails() if f"/violations/{episode}" in b and "Lasted" in b
            )
            assert re.search(r"RESOLVED: .* after \d+", resolved_mail[0]), resolved_mail[0]
            lasted = r"Lasted:\**\s+\d+(\.\d+)? (s|min)[^\n]*\(\d{4}-[^\n]* UTC to \d{4}-[^\n]* UTC\)"
            for what, text in (
                ("webhook", done["text"]),
                ("slack", resolved_texts(s.slack_messages())[0]),
                ("email", resolved_mail[1]),
            ):
                assert re.search(lasted, text), f"{what}: how long it lasted\n{text}"
                assert re.search(r"http_5xx, HTTP 503", text), f"{what}: the failure, once resolved\n{text}"

            # The ticket is closed with a comment, and it stays the only one of the incident.
            def closed() -> list[Any]:
                return [i for i in tickets() if i.state == "closed" and i.comments]

            wait_for(closed, 120, what=lambda: f"the ticket closed with a comment\n{stack.log()}")
            [ticket] = tickets()
            assert any("resolved" in str(c).lower() for c in ticket.comments), ticket.comments
            assert s.github.problems == []
            # One message per channel for the outage, and one resolved message.
            assert len(_firing(s.webhooks(), episode)) == 1
            assert len(_resolved(s.webhooks(), episode)) == 1
            for texts in (s.slack_messages(), [b for _, b in s.emails()]):
                naming = _naming(texts, episode)
                assert (len(naming) - len(resolved_texts(texts)), len(resolved_texts(texts))) == (1, 1)


SHIFT_FACTS = (
    (r"\bslower\b", "which way"),
    (
        r"\+\d+ % over the [\d.,]+ (ms|s) baseline",
        "how much, in the metric's unit, over the baseline",
    ),
    (r"prompt [\w-]+", "which prompt"),
    (r"latency [\d.,]+ (ms|s)", "the level in the metric's unit"),
)


def test_a_2x_latency_shift_says_slower_by_how_much_in_every_channel(data_dir: Path) -> None:
    with sinks() as s:
        env = s.env(time_scale=0.05, baseline_n=40)
        with llmscope_up(data_dir, env) as stack, stack.client() as client:
            # Every prompt chart of the model collects its 40-point baseline.
            wait_for(lambda: _points(client) >= 3 * 60, 180, what=lambda: f"baseline data\n{stack.log()}")

            # The demo pace gives false alarms; an open critical episode would absorb the shift
            # (one episode per direction), so the shift starts once none is open.
            def quiet() -> bool:
                return not any(
                    v["severity"] == "critical" and v["state"] == "open" for v in _violations(client)
                )

            wait_for(quiet, 180, what=lambda: f"no critical episode open\n{stack.log()}")
            started = datetime.now(UTC)
            shift = stack.llmscope("sim", "inject", "shift", "--model", MODEL, "--factor", "2")
            assert shift.returncode == 0, shift.stderr

            def slower() -> list[tuple[dict[str, Any], dict[str, Any]]]:
                return [
                    (n, f)
                    for n in s.webhooks()
                    for f in n["firing"]
                    if datetime.fromisoformat(f["ts"]) >= started
                    and f["metric"].endswith("_ms")
                    and f["severity"] == "critical"
                    and "slower" in n["text"]
                ]

            try:
                found: list[tuple[dict[str, Any], dict[str, Any]]] = wait_for(  # type: ignore[assignment]
                    slower, 120, what="a webhook saying slower"
                )
            except AssertionError as exc:
                new = [
                    (v["ts"], v["metric"], v["rule"], v["severity"], v["state"], v["detail"])
                    for v in _violations(client)
                    if datetime.fromisoformat(v["ts"]) >= started
                ]
                texts = "\n---\n".join(
                    n["text"][:600]
                    for n in s.webhooks()
                    if any(datetime.fromisoformat(f["ts"]) >= started for f in n["firing"])
                )
                raise AssertionError(
                    f"{exc}\nnew violations: {new}\nwebhooks:\n{texts}\n{stack.log()}"
                ) from None
            hook, alert = found[0]
            episode = alert["episode_id"]
            wait_for(lambda: _naming(s.slack_messages(), episode), 60, what="the shift's Slack message")
            wait_for(lambda: _naming([b for _, b in s.emails()], episode), 60, what="the shift's email")
            slack = _naming(s.slack_messages(), episode)[0]
            subject, mail = next((subj, b) for subj, b in s.emails() if f"/violations/{episode}" in b)
            for what, text in (("webhook", hook["text"]), ("slack", slack), ("email", mail)):
                for pattern, fact in SHIFT_FACTS:
                    assert re.search(pattern, text), f"{what}: {fact} ({pattern!r}) missing in\n{text}"
                assert f"prompt {alert['prompt_id']}" in text, f"{what}: prompt {alert['prompt_id']}\n{text}"
                _common_facts(text, what)
            assert "slower" in subject, subject
            # One first message per channel for the shift's incident; what follows is in its thread.
            firsts = [n for n in s.webhooks() if n["reason"] == "first"]
            assert [n["incident_id"] for n in firsts].count(hook["incident_id"]) == 1
            links = _links(mail)
            _assert_resolves(stack, links["Incident link"], hook["incident_id"])
            _assert_resolves(stack, links["Chart"], MODEL)


ON_HOST = ("llama3.1:8b", "qwen2.5:7b")


def test_a_cascade_on_one_host_is_one_message_per_channel_naming_both_models(data_dir: Path) -> None:
    with sinks() as s:
        env = {
            **s.env(time_scale=0.05, baseline_n=40),
            "LLMSCOPE_SIM_MODELS": " ".join(f"{m}@sim-gpu-1" for m in ON_HOST),
            # The product's default wait before an incident's first message: the second model's
            # signal, seconds after the first's, joins the incident before anyone is told.
            "LLMSCOPE_ALERTER_GROUP_WAIT_S": "30",
        }
        with llmscope_up(data_dir, env) as stack, stack.client() as client:

            def points(model: str) -> int:
                reply = client.get(
                    "/api/stats/spc", params={"provider": "ollama", "model": model, "hours": 1}
                )
                return len(reply.json().get("points", [])) if reply.status_code == 200 else 0

            def violations(model: str) -> list[dict[str, Any]]:
                reply = client.get("/api/violations", params={"model": model, "limit": 200})
                body = reply.json() if reply.status_code == 200 else []
                items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
                return items

            for model in ON_HOST:
                wait_for(lambda m=model: points(m) >= 3 * 60, 180, what=f"baseline data of {model}")

            # As in the whole-stack cascade test: an open critical episode would absorb the
            # cascade's shift on its model, so the cascade starts once none is open.
            def quiet() -> bool:
                return not any(
                    v["severity"] == "critical" and v["state"] == "open"
                    for m in ON_HOST
                    for v in violations(m)
                )

            wait_for(quiet, 180, what=lambda: f"no critical episode open on the host\n{stack.log()}")
            started = datetime.now(UTC)
            injected = stack.llmscope("sim", "inject", "cascade", "--host", "sim-gpu-1", "--factor", "1.6")
            assert injected.returncode == 0, injected.stderr

            def cascade_pages() -> list[dict[str, Any]]:
                return [
                    n
                    for n in s.webhooks()
                    if n["reason"] == "first"
                    and set(ON_HOST) <= set(n["cascade_models"])
                    and any(datetime.fromisoformat(f["ts"]) >= started for f in n["firing"])
                ]

            found: list[dict[str, Any]] = wait_for(  # type: ignore[assignment]
                cascade_pages, 300, what=lambda: f"a webhook naming the cascade\n{stack.log()}"
            )
            page = found[0]
            incident = page["incident_id"]
            link = f"/incidents/{incident}"
            wait_for(
                lambda: [t for t in s.slack_messages() if link in t], 60, what="the cascade's Slack message"
            )
            wait_for(lambda: [b for _, b in s.emails() if link in b], 60, what="the cascade's email")

            # One first message per channel for the incident, naming both models and the cascade.
            assert [n["incident_id"] for n in s.webhooks() if n["reason"] == "first"].count(incident) == 1
            assert "Cascade on sim-gpu-1" in page["title"], page["title"]
            assert {f["model"] for f in page["firing"]} == set(ON_HOST), page["firing"]
            slack = [t for t in s.slack_messages() if link in t]
            mails = [(subj, b) for subj, b in s.emails() if link in b]

            def plain(msg: EmailMessage) -> str:
                part = msg.get_body(("plain",))
                return part.get_content() if isinstance(part, EmailMessage) else ""

            roots = [m for m in s.mailbox.messages if link in plain(m) and not m["In-Reply-To"]]
            assert len(roots) == 1, [m["Subject"] for m in roots]
            for what, text in (("webhook", page["text"]), ("slack", slack[0]), ("email", mails[0][1])):
                for model in ON_HOST:
                    assert model in text, f"{what}: {model} missing in\n{text}"
                assert "Cascade" in text, f"{what}: not named a cascade\n{text}"
            assert mails[0][0].startswith("[LLMscope] CRITICAL: Cascade on sim-gpu-1: 2 models degraded"), (
                mails[0][0]
            )
            # No page of its own for either model: every first message since the injection about a
            # model of the host is the cascade's.
            others = [
                n
                for n in s.webhooks()
                if n["reason"] == "first"
                and n["incident_id"] != incident
                and any(
                    datetime.fromisoformat(f["ts"]) >= started and f["model"] in ON_HOST for f in n["firing"]
                )
            ]
            assert others == [], [(n["incident_id"], n["title"]) for n in others]
            assert page["incident_url"].endswith(link)
            _assert_resolves(stack, page["incident_url"], incident)
