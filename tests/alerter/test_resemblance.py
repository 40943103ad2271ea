"""The resemblance of a new incident to a resolved one (pure), and the link it makes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from msgspec import structs

from llmscope.alerter.messages import IncidentRef, PastIncident
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier
from llmscope.alerter.notifiers.slack import SlackNotifier
from llmscope.alerter.resemblance import THRESHOLD, most_resembling, resemblance, signature
from llmscope.config.env import Secret
from llmscope.proto.violation import ViolationEvent
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.harness import start_alerter


def slow(model: str = "llama3.1:8b", pct: float = 100.0, **kw: object) -> ViolationEvent:
    """A latency rise of ``pct`` % on ``model``."""
    ev = violation(0, model=model, rule="CUSUM", prefix=f"s{pct}", **kw)  # type: ignore[arg-type]
    return structs.replace(ev, direction="up", change_pct=pct)


def test_the_same_move_of_the_same_models_on_the_same_host_resembles_fully() -> None:
    assert resemblance(signature([slow()]), signature([slow()])) == pytest.approx(1.0)
    two = [slow(), slow("qwen2:7b", 80)]
    assert resemblance(signature(two), signature(list(reversed(two)))) == pytest.approx(1.0)


def test_size_counts_through_the_ratio_of_the_moves() -> None:
    base = signature([slow(pct=100)])
    assert resemblance(signature([slow(pct=150)]), base) == pytest.approx(100 / 150)
    assert resemblance(signature([slow(pct=120)]), base) >= THRESHOLD  # similar size
    assert resemblance(signature([slow(pct=1000)]), base) < THRESHOLD  # 10x: not the same thing
    # several keys: the geometric mean of their ratios
    new = signature([slow(pct=100), slow("qwen2:7b", 50)])
    old = signature([slow(pct=100), slow("qwen2:7b", 100)])
    assert resemblance(new, old) == pytest.approx(0.5**0.5)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(slow(host="gpu-2"), id="another host"),
        pytest.param(slow("qwen2:7b"), id="another model"),
        pytest.param(structs.replace(slow(), metric="ttft_ms"), id="another metric"),
        pytest.param(structs.replace(slow(), direction="down", change_pct=-100.0), id="the other way"),
    ],
)
def test_a_different_place_model_metric_or_direction_does_not_resemble(other: ViolationEvent) -> None:
    assert resemblance(signature([other]), signature([slow()])) == 0.0


def test_an_incident_with_more_models_than_the_old_one_does_not_resemble_it() -> None:
    assert resemblance(signature([slow(), slow("qwen2:7b")]), signature([slow()])) == 0.0
    assert resemblance(signature([slow()]), signature([slow(), slow("qwen2:7b")])) == 0.0


def test_without_host_labels_the_provider_is_the_place() -> None:
    a = slow(host="", provider="openai")
    assert resemblance(signature([a]), signature([slow(host="", provider="openai")])) == 1.0
    assert resemblance(signature([a]), signature([slow(host="", provider="ollama")])) == 0.0


def test_without_a_change_percent_sigma_is_the_size_and_its_sign_the_direction() -> None:
    old = violation(0, value=2000.0)  # +4 sigma, no direction field (older engine)
    assert resemblance(signature([violation(1, value=2300.0)]), signature([old])) == pytest.approx(4 / 5)
    assert resemblance(signature([violation(1, value=100.0)]), signature([old])) == 0.0  # below


def test_the_best_candidate_at_or_above_the_threshold_wins_and_ties_keep_the_first() -> None:
    new = signature([slow(pct=100)])
    far, near, same = signature([slow(pct=1000)]), signature([slow(pct=130)]), signature([slow(pct=100)])
    assert most_resembling(new, [("far", far)]) is None
    best = most_resembling(new, [("far", far), ("near", near)])
    assert best is not None
    assert best[0] == "near"
    assert best[1] == pytest.approx(100 / 130)
    assert most_resembling(new, [("a", same), ("b", same)]) == ("a", 1.0)
    assert most_resembling(signature([]), [("a", same)]) is None


async def test_a_new_incident_links_the_resolved_one_it_resembles_with_its_note(database_url: str) -> None:
    run = await start_alerter(database_url, None, {}, incident_window=60.0)
    try:
        routes = (await run.alerter.runtime()).routes
        first = slow(pct=90)
        await run.store.ingest([first], routes, None)
        old_id = await run.pool.fetchval("SELECT id FROM alerter_incidents")
        assert await run.store.resolve_incident(old_id, "ana", "restarted the GPU node")
        await run.store.ingest([cleared(first)], routes, None)
        # A different problem later on the same model (10x): no link.
        other = structs.replace(slow(pct=1000), id="o", episode_id="o", opened_at=T0 + timedelta(hours=1))
        await run.store.ingest([other], routes, None)
        # The same problem again: linked, and the message's incident names the note.
        again = structs.replace(slow(pct=100), id="a", episode_id="a", opened_at=T0 + timedelta(hours=2))
        await run.store.ingest([again], routes, None)
        refs = await run.store.incidents_for(["o", "a"])
        assert refs["o"].seen_before is None
        seen = refs["a"].seen_before
        assert seen is not None
        assert (seen.id, seen.resolved_by, seen.note) == (old_id, "ana", "restarted the GPU node")
        event = await run.store.incident(refs["a"].id)
        assert event is not None
        assert event.resembles is not None
        assert event.resembles.incident_id == old_id
        assert event.resembles.resolved_note == "restarted the GPU node"
        assert event.resembles.score == pytest.approx(0.9)
    finally:
        await run.close()


def test_messages_show_the_resembled_incidents_resolution_note() -> None:
    past = PastIncident(
        "inc-old", "ollama/llama3.1:8b slow", T0 - timedelta(days=2), "ana", "restarted the GPU node"
    )
    ref = IncidentRef("inc-new", "ollama/llama3.1:8b slow again", ("llama3.1:8b",), seen_before=past)
    ev = slow()
    n = Notification(
        id="1:mail:1",
        created_at=T0 + timedelta(minutes=1),
        reason="first",
        route="default",
        group_key="incident=inc-new",
        channel="mail",
        firing=(AlertView(ev, incident=ref),),
        resolved=(),
        group_labels={"incident": "inc-new"},
        public_url="https://scope.example",
        lead_episode_id=ev.episode_id,
        incident=ref,
    )
    mail = EmailNotifier(
        "mail", EmailConfig(host="h", sender="a@b.io", recipients=("c@d.io",))
    ).build_payload(n)
    text = mail.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    assert "Looks like ollama/llama3.1:8b slow (resolved" in body
    assert "by ana): restarted the GPU node" in body
    assert "https://scope.example/incidents/inc-old" in body
    slack = json.dumps(SlackNotifier("chat", Secret("http://x"), session=None).build_payload(n).body)  # type: ignore[arg-type]
    assert "restarted the GPU node" in slack
