"""Every message the product can send, per channel and case, against golden files.

The files in ``tests/alerter/golden/`` are what a reviewer reads: ``<case>.email.txt`` (the
Subject and the plain-text body), ``<case>.slack.json`` (incoming webhook),
``<case>.slack-bot.json`` (chat.postMessage: the body and the incident thread it goes to),
``<case>.webhook.json``, ``<case>.pagerduty.json``, ``<case>.alertmanager.json`` (the
postableAlerts), ``<case>.teams.json``, ``<case>.discord.json`` and ``<case>.mattermost.json``;
the tickets' texts are ``ticket-<case>.<markup>`` (test_ticket_golden.py).
After an intended change, regenerate them with
``LLMSCOPE_UPDATE_GOLDEN=1 pytest tests/alerter/test_messages.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from msgspec import structs

from llmscope.alerter import messages as m
from llmscope.alerter.messages import FailedProbe, IncidentRef, Outage
from llmscope.alerter.notifiers.base import AlertView, ContextPoint, Notification
from llmscope.alerter.testsend import sample_violation
from llmscope.proto.violation import ChartLimits, ViolationEvent
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.rendering import channel_texts

GOLDEN = Path(__file__).parent / "golden"
URL = "https://scope.example"
NOW = T0 + timedelta(minutes=12)


def shift(n: int = 1, *, model: str = "llama3.1:8b", engine_fields: bool = True) -> ViolationEvent:
    """A 2x latency shift as the new engine reports it (CUSUM, level and change in ms)."""
    ev = violation(n, model=model, rule="CUSUM", value=1630.0)
    ev = structs.replace(
        ev,
        target="gpu-1-ollama",
        rule_name="sustained shift",
        limits=structs.replace(
            ev.limits, center=880.0, ucl=1320.0, lcl=590.0, transform="log", sigma=0.08837
        ),
        point_ids=tuple(f"p{n}-{i}" for i in range(6)),
        point_values=(1500.0, 1580.0, 1610.0, 1640.0, 1650.0, 1630.0),
        point_ts=tuple(T0 - timedelta(seconds=30 * (5 - i)) for i in range(6)),
    )
    if engine_fields:
        ev = structs.replace(
            ev,
            direction="up",
            level=1630.0,
            change_pct=85.2,
            detail="p50 latency 1.63 s, +85 % over the 0.88 s baseline",
        )
    return ev


def outage_event() -> ViolationEvent:
    ev = violation(5, rule="AVAILABILITY", metric="availability", value=3.0)
    return structs.replace(
        ev,
        target="gpu-1-ollama",
        prompt_id="",
        rule_name="3 failed probes in a row",
        limits=ChartLimits(
            center=0.01,
            sigma=0,
            ucl=0.14,
            lcl=0,
            zone_a_upper=0.14,
            zone_a_lower=0,
            zone_b_upper=0.14,
            zone_b_lower=0,
        ),
        point_values=(),
        point_ts=(),
    )


OUTAGE = Outage(
    count=4,
    since=T0 - timedelta(seconds=90),
    last_success=T0 - timedelta(seconds=120),
    recent=(
        FailedProbe(T0, "http_5xx", 503, "upstream connect error or disconnect/reset before headers"),
        FailedProbe(T0 - timedelta(seconds=30), "timeout", None, "no answer within 30 s"),
    ),
)
SINGLE = IncidentRef(
    "inc-v1", "ollama/llama3.1:8b on gpu-1: latency_ms out of control (CUSUM)", ("llama3.1:8b",)
)
DOWN = IncidentRef("inc-v2", "ollama/llama3.1:8b on gpu-1: probes failing (AVAILABILITY)", ("llama3.1:8b",))
CASCADE = IncidentRef(
    "inc-v1",
    "Cascade on gpu-1: 2 models degraded (llama3.1:8b, qwen2:7b) - latency_ms",
    ("llama3.1:8b", "qwen2:7b"),
    cascade=True,
    host="gpu-1",
)


def notification(case: str) -> Notification:
    base = Notification(
        id="7:oncall:1",
        created_at=NOW,
        reason="first",
        route="default",
        group_key="incident=inc-v1",
        channel="oncall",
        public_url=URL,
        lead_episode_id=shift().episode_id,
        incident=SINGLE,
    )
    ctx = (
        *tuple(
            ContextPoint(
                T0 + timedelta(seconds=30 * (i - 10)), 880.0 + (750.0 if i >= 5 else 0.0) + i, f"c{i}", i >= 5
            )
            for i in range(11)
        ),
        ContextPoint(T0 + timedelta(seconds=330), None, "c11", status="timeout"),
    )
    match case:
        case "firing":
            return replace(base, firing=(AlertView(shift(), context=ctx, incident=SINGLE),))
        case "repaged":
            # Resolved by hand at 12:03, never cleared by the engine: paged again an hour later.
            again = AlertView(
                shift(),
                context=ctx,
                incident=SINGLE,
                repage_of_by="ana",
                repage_of_at=T0 + timedelta(minutes=3),
                repage_of_note="restarted ollama",
            )
            return replace(base, id="8:oncall:1", firing=(again,), paged_again=frozenset({again.episode_id}))
        case "firing_old_event":
            return replace(base, firing=(AlertView(shift(engine_fields=False), incident=SINGLE),))
        case "update":
            done = tuple(
                AlertView(shift(i), cleared(shift(i), at=T0 + timedelta(minutes=4)), incident=SINGLE)
                for i in (2, 3, 4)
            )
            return replace(
                base, id="7:oncall:2", reason="new_violations", firing=(AlertView(shift()),), resolved=done
            )
        case "resolved":
            return replace(
                base,
                id="7:oncall:3",
                reason="resolved",
                resolved=(
                    AlertView(shift(), cleared(shift(), at=T0 + timedelta(minutes=9)), incident=SINGLE),
                ),
            )
        case "outage":
            ev = outage_event()
            return replace(
                base,
                lead_episode_id=ev.episode_id,
                firing=(AlertView(ev, outage=OUTAGE, incident=DOWN),),
            )
        case "outage_resolved":
            ev = outage_event()
            return replace(
                base,
                id="7:oncall:2",
                reason="resolved",
                lead_episode_id=ev.episode_id,
                resolved=(AlertView(ev, cleared(ev, at=T0 + timedelta(minutes=3)), outage=OUTAGE),),
            )
        case "cascade":
            return replace(
                base,
                incident=CASCADE,
                firing=(
                    AlertView(shift(1), incident=CASCADE),
                    AlertView(shift(2, model="qwen2:7b"), incident=CASCADE),
                ),
            )
        case "merged":
            # Both incidents of gpu-1 had paged; this one was folded into the host's cascade.
            return replace(
                base,
                id="7:oncall:3",
                reason="merged",
                merged_into=IncidentRef(
                    "inc-v0",
                    "Cascade on gpu-1: 2 models degraded (llama3.1:8b, qwen2:7b) - latency_ms",
                    ("llama3.1:8b", "qwen2:7b"),
                    cascade=True,
                    host="gpu-1",
                ),
            )
        case "test":
            return replace(
                base,
                id="test-1",
                reason="test",
                route="test",
                group_key="test",
                incident=None,
                lead_episode_id="",
                firing=(AlertView(structs.replace(sample_violation(T0), id="test-1", episode_id="test-1")),),
            )
    raise AssertionError(case)


CASES = (
    "firing",
    "repaged",
    "firing_old_event",
    "update",
    "resolved",
    "outage",
    "outage_resolved",
    "cascade",
    "merged",
    "test",
)
ALERT_CASES = tuple(c for c in CASES if c != "merged")  # a closing message carries no alert


def for_alertmanager(case: str) -> Notification:
    """What an Alertmanager channel is given: a merge's closing message also carries the alerts
    it was last told firing, to end them under the absorbed incident's labels (the other channels'
    closing messages carry none; service.notification_for)."""
    n = notification(case)
    if case == "merged":
        return replace(n, resolved=(AlertView(shift(), incident=SINGLE),))
    return n


def rendered(case: str) -> dict[str, str]:
    return channel_texts(notification(case), alertmanager=for_alertmanager(case))


@pytest.mark.parametrize("case", CASES)
def test_golden_messages(case: str) -> None:
    update = os.environ.get("LLMSCOPE_UPDATE_GOLDEN") == "1"
    for suffix, content in rendered(case).items():
        path = GOLDEN / f"{case}.{suffix}"
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(content)
        assert path.exists(), f"{path} missing: run with LLMSCOPE_UPDATE_GOLDEN=1 and review it"
        assert content == path.read_text(), f"{path.name} differs from the golden file"


@pytest.mark.parametrize("case", ALERT_CASES)
def test_every_message_answers_first_what_since_how_sure_and_where(case: str) -> None:
    out = rendered(case)
    body = out["email.txt"]
    head = "\n".join(body.splitlines()[:12])
    n = notification(case)
    for a in n.alerts:
        assert a.event.model in head
    assert "How sure:" in head
    assert ("Since:" in head) or ("Lasted:" in head)
    hook = json.loads(out["webhook.json"])
    chats = [out[f"{k}.json"] for k in ("teams", "discord", "mattermost", "alertmanager")]
    human = [out["email.txt"], out["slack.json"], out["pagerduty.json"], hook["title"], hook["text"], *chats]
    for text in human:
        # no parameters or log-scale statistics in what people read (the webhook's events keep
        # the chart's full statistics for machines)
        for never in ("Sigma", "sigma", "k=", "h=", "0.08837", "Zone A"):
            assert never not in text, (case, never)
        resolve_only = text is out["pagerduty.json"] and not n.firing  # a bare resolve event
        if case != "test" and text is not hook["title"] and not resolve_only:
            assert f"{URL}/violations/" in text
    if case == "test":
        assert f"{URL}/violations/test" not in "".join(out.values())  # no link to a sample that isn't stored


def test_a_shift_says_slower_by_how_much_in_ms_for_which_prompt() -> None:
    for case in ("firing", "firing_old_event"):
        body = rendered(case)["email.txt"]
        assert "prompt simple-1" in body.splitlines()[0]  # the Subject
        assert "slower" in body.splitlines()[0]
        assert "+85 %" in body
        assert "0.88 s baseline" in body or "880 ms baseline" in body
        assert "a sustained shift" in body
        assert f"{URL}/incidents/inc-v1" in body
        assert f"{URL}/?provider=ollama&model=llama3.1%3A8b&prompt_id=simple-1" in body


def test_an_outage_names_failure_kind_status_error_count_since_and_last_success() -> None:
    out = rendered("outage")
    for text in out.values():
        for needle in (
            "http_5xx",
            "503",
            "upstream connect error",
            "timeout",
            "4 failed probe(s)",
            "Last success",
        ):
            assert needle in text.replace("\\u", ""), needle
    assert "+29900" not in out["email.txt"]
    assert "Lasted:" in rendered("outage_resolved")["email.txt"]
    assert "after 4 min 30 s" in rendered("outage_resolved")["email.txt"].splitlines()[0]


def test_titles_and_colours_follow_the_state() -> None:
    assert notification("firing").title.startswith("[LLMscope] CRITICAL: ")
    update = notification("update").title
    assert update.startswith("[LLMscope] UPDATE, still CRITICAL: ")
    assert "[1 still firing, 3 resolved]" in update
    assert notification("resolved").title.startswith("[LLMscope] RESOLVED: ")
    assert notification("cascade").title.startswith("[LLMscope] CRITICAL: Cascade on gpu-1: 2 models")
    slack = json.loads(rendered("firing")["slack.json"])
    assert slack["attachments"][0]["color"] == m.SEVERITY_COLOURS["critical"]
    spike = structs.replace(shift(), rule="SPIKE")
    assert m.colour(m.tone([spike])) == "#D0021B"  # a critical SPIKE is red, never grey
    faster = structs.replace(shift(), direction="down", better=True, change_pct=-40.0, detail="")
    assert "faster" in m.movement(faster)
    assert m.tone([faster]) == "improved"


def test_the_cascade_is_one_message_naming_both_models_and_the_incident() -> None:
    out = rendered("cascade")
    for text in out.values():
        assert "llama3.1:8b" in text
        assert "qwen2:7b" in text
        assert f"{URL}/incidents/inc-v1" in text
    hook = json.loads(out["webhook.json"])
    assert hook["cascade_models"] == ["llama3.1:8b", "qwen2:7b"]
    assert hook["incident_id"] == "inc-v1"
    (trigger,) = json.loads(out["pagerduty.json"])
    assert trigger["dedup_key"] == "inc-v1"  # one incident, one PagerDuty incident


def test_a_merged_incidents_closing_message_names_and_links_the_survivor_in_its_own_thread() -> None:
    out = rendered("merged")
    for kind in ("email.txt", "slack.json", "slack-bot.json", "webhook.json", "teams.json", "discord.json"):
        assert "merged into incident inc-v0" in out[kind], kind
    for kind in ("email.txt", "slack.json", "webhook.json", "teams.json", "discord.json", "mattermost.json"):
        assert f"{URL}/incidents/inc-v0" in out[kind], kind
    assert "In-Reply-To: <7.oncall.1@llmscope>" in out["email.txt"]  # the absorbed incident's thread
    assert json.loads(out["slack-bot.json"])["thread_key"] == "incident:inc-v1"
    hook = json.loads(out["webhook.json"])
    assert (hook["reason"], hook["incident_id"], hook["merged_into"]) == ("merged", "inc-v1", "inc-v0")
    # PagerDuty: the absorbed incident's alert is resolved (its own key), nothing triggered
    assert json.loads(out["pagerduty.json"]) == [{"event_action": "resolve", "dedup_key": "inc-v1"}]


def test_follow_ups_thread_under_the_first_email() -> None:
    assert "In-Reply-To: <7.oncall.1@llmscope>" in rendered("update")["email.txt"]
    assert "In-Reply-To" not in rendered("firing")["email.txt"]


def test_identical_failures_are_one_line_with_their_count_and_the_status_is_said_once() -> None:
    def down(seconds: int) -> FailedProbe:
        return FailedProbe(T0 - timedelta(seconds=seconds), "http_5xx", 503, "HTTP 503: service unavailable")

    timeout = FailedProbe(T0 - timedelta(seconds=6), "timeout", None, "no answer")
    recent = [down(0), down(2), down(4), timeout, down(8)]
    assert m.failure_lines(recent) == [
        f"{m.clock(T0 - timedelta(seconds=4))}-{m.clock(T0)} http_5xx, HTTP 503: service unavailable (x3)",
        f"{m.clock(T0 - timedelta(seconds=6))} timeout, no HTTP status: no answer",
        f"{m.clock(T0 - timedelta(seconds=8))} http_5xx, HTTP 503: service unavailable",
    ]


def test_only_the_message_that_tells_a_page_again_is_titled_for_it() -> None:
    """The group's later messages about a violation paged again (a reminder here) are titled for
    what they are; its facts still say it was resolved by hand and paged again."""
    told = notification("repaged")
    later = replace(told, id="8:oncall:2", reason="repeat", paged_again=frozenset())
    assert told.title.startswith("[LLMscope] CRITICAL: STILL FAILING after resolved by ana at "), told.title
    assert "STILL FAILING" not in later.title, later.title
    assert later.title.startswith("[LLMscope] CRITICAL: ollama/llama3.1:8b")
    assert later.title.endswith("(reminder)")
    for suffix, text in channel_texts(later).items():
        assert "STILL FAILING" not in text, suffix
    assert "Still failing:" in channel_texts(later)["email.txt"]
