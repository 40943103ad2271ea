"""The pure core: routing, dedup, grouping, silences, retry policy, config."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from llmscope.alerter.config import Timings, build_runtime, load_file, parse_duration
from llmscope.alerter.dedup import LastNotification, needs_update
from llmscope.alerter.grouping import ChannelView, FlushPlan, GroupDecision, decide, first_flush_at
from llmscope.alerter.model import Alert
from llmscope.alerter.retry import (
    Attempt,
    DeliveryError,
    RetryPolicy,
    classify_http,
    parse_retry_after,
    send_with_retry,
)
from llmscope.alerter.routing import Route, group_key, route_alert
from llmscope.alerter.silences import Silence, Weekly, muting, parse_days
from llmscope.config.env import ConfigError, Env
from tests.alerter.factories import T0, cleared, violation


def test_default_route_notifies_only_critical() -> None:
    rt = build_runtime(None, Env({"LLMSCOPE_SLACK_WEBHOOK_URL": "http://x/hook"}), {}, timings=Timings())
    assert [r.name for r in rt.routes] == ["default"]
    route = rt.routes[0]
    assert route.channels == ("slack",)
    assert route_alert(rt.routes, Alert(violation(severity="critical")).labels) == [route]
    assert route_alert(rt.routes, Alert(violation(severity="warning")).labels) == []


def test_routes_match_rules_models_first_match_wins_and_continue() -> None:
    pager = Route("pager", ("pd",), rules=("R1",), models=("llama*",), continue_matching=True)
    chat = Route("chat", ("slack",), severities=("critical", "warning"))
    rest = Route("rest", ("email",), severities=("critical", "warning"))
    labels = Alert(violation(model="llama3.1:8b", rule="R1")).labels
    assert route_alert([pager, chat, rest], labels) == [pager, chat]
    other = Alert(violation(model="qwen2:7b", rule="R2", severity="warning")).labels
    assert route_alert([pager, chat, rest], other) == [chat]
    assert route_alert([pager, chat], labels, allowed_rules=frozenset({"R2"})) == []
    # By default a group is an incident; outside any, one model.
    assert group_key(chat, labels) == "incident=ollama/llama3.1:8b"
    assert group_key(chat, {**labels, "incident": "inc-1"}) == "incident=inc-1"
    by_model = Route("m", ("slack",), group_by=("provider", "model"))
    assert group_key(by_model, labels) == "provider=ollama,model=llama3.1:8b"


def test_dedup_reasons() -> None:
    now = T0
    a, b = frozenset({"a"}), frozenset({"a", "b"})
    kw = {"acknowledged": frozenset(), "repeat_interval": 3600.0, "send_resolved": True, "now": now}
    assert needs_update(firing=a, resolved=frozenset(), last=None, **kw) == "first"  # type: ignore[arg-type]
    assert needs_update(firing=frozenset(), resolved=a, last=None, **kw) is None  # type: ignore[arg-type]
    last = LastNotification(now - timedelta(minutes=5), a, frozenset())
    assert needs_update(firing=b, resolved=frozenset(), last=last, **kw) == "new_violations"  # type: ignore[arg-type]
    assert needs_update(firing=a, resolved=frozenset(), last=last, **kw) is None  # type: ignore[arg-type]
    assert needs_update(firing=frozenset(), resolved=a, last=last, **kw) == "resolved"  # type: ignore[arg-type]
    old = LastNotification(now - timedelta(hours=2), a, frozenset())
    assert needs_update(firing=a, resolved=frozenset(), last=old, **kw) == "repeat"  # type: ignore[arg-type]
    acked = {**kw, "acknowledged": a}
    assert needs_update(firing=a, resolved=frozenset(), last=old, **acked) is None  # type: ignore[arg-type]
    no_resolved = {**kw, "send_resolved": False}
    assert needs_update(firing=frozenset(), resolved=a, last=last, **no_resolved) is None  # type: ignore[arg-type]


def _simulate(
    route: Route,
    arrivals: list[tuple[datetime, Alert]],
    until: datetime,
    step: float = 1.0,
    acks_at: datetime | None = None,
) -> list[tuple[datetime, FlushPlan]]:
    """Run a group's flush timer over time with an injected clock, as the dispatcher does."""
    sent: list[tuple[datetime, FlushPlan]] = []
    last: LastNotification | None = None
    alerts: dict[str, Alert] = {}
    next_flush: datetime | None = None
    t = arrivals[0][0]
    while t <= until:
        for at, alert in arrivals:
            if at <= t and alert.episode_id not in alerts:
                alerts[alert.episode_id] = alert
                next_flush = next_flush or first_flush_at(route, at)
        if acks_at is not None and t >= acks_at:
            alerts = {
                k: Alert(a.event, a.cleared, acknowledged_at=acks_at, acknowledged_by="ops")
                for k, a in alerts.items()
            }
        if next_flush is not None and t >= next_flush:
            d = decide(
                route=route,
                alerts=list(alerts.values()),
                channels=[ChannelView("mail")],
                last={"mail": last},
                now=t,
            )
            for plan in d.plans:
                sent.append((t, plan))
                last = LastNotification(t, plan.record_firing, plan.record_resolved)
            next_flush = d.next_flush_at
        t += timedelta(seconds=step)
    return sent


def test_alert_storm_is_one_message_then_reminders_until_ack() -> None:
    route = Route("default", ("mail",), group_wait=30, group_interval=300, repeat_interval=3600)
    # 50 violations on one model within 10 s
    storm = [(T0 + timedelta(seconds=i * 0.2), Alert(violation(i))) for i in range(50)]
    sent = _simulate(
        route,
        storm,
        until=T0 + timedelta(hours=3, minutes=10),
        step=5,
        acks_at=T0 + timedelta(hours=2, minutes=30),
    )
    assert [p.reason for _, p in sent] == ["first", "repeat", "repeat"]
    assert len(sent[0][1].firing) == 50
    assert sent[0][0] == T0 + timedelta(seconds=30)
    gaps = [(b - a).total_seconds() for (a, _), (b, _) in itertools.pairwise(sent)]
    assert all(3600 <= g < 3600 + 300 + 5 for g in gaps)  # repeat_interval, on the group_interval tick


def test_a_page_again_is_news_to_every_channel_a_send_resolved_false_one_too() -> None:
    """Two violations paged; one resolved by hand (told to ``mail``; ``quiet`` takes no
    resolutions, so for it the violation fired all along), then paged again: news to both, once."""
    route = Route("default", ("mail", "quiet"), group_wait=0, group_interval=60)
    channels = [ChannelView("mail"), ChannelView("quiet", send_resolved=False)]
    a, b = Alert(violation(1)), Alert(violation(2, model="qwen2:7b"))
    minute = timedelta(minutes=1)

    def told(
        d: GroupDecision, at: datetime, before: dict[str, LastNotification]
    ) -> dict[str, LastNotification]:
        return {
            **before,
            **{p.channel: LastNotification(at, p.record_firing, p.record_resolved) for p in d.plans},
        }

    d1 = decide(route=route, alerts=[a, b], channels=channels, last={}, now=T0)
    last = told(d1, T0, {})
    by_hand = dataclasses.replace(a, resolved_at=T0 + minute, resolved_by="ana")
    d2 = decide(route=route, alerts=[by_hand, b], channels=channels, last=last, now=T0 + minute)
    assert [(p.channel, p.reason) for p in d2.plans] == [("mail", "resolved")]
    last = told(d2, T0 + minute, last)
    again = dataclasses.replace(a, repaged_at=T0 + 61 * minute, repage_of_at=T0 + minute, repage_of_by="ana")
    d3 = decide(route=route, alerts=[again, b], channels=channels, last=last, now=T0 + 61 * minute)
    assert [(p.channel, p.reason) for p in d3.plans] == [
        ("mail", "new_violations"),
        ("quiet", "new_violations"),
    ]
    assert all(p.record_firing == {a.episode_id, b.episode_id} for p in d3.plans)
    last = told(d3, T0 + 61 * minute, last)
    d4 = decide(route=route, alerts=[again, b], channels=channels, last=last, now=T0 + 62 * minute)
    assert d4.plans == ()


def test_group_announces_resolution_and_closes() -> None:
    route = Route("default", ("mail", "quiet"), group_wait=0, group_interval=60)
    a = Alert(violation(1))
    d1 = decide(
        route=route,
        alerts=[a],
        channels=[ChannelView("mail"), ChannelView("quiet", send_resolved=False)],
        last={},
        now=T0,
    )
    assert [p.reason for p in d1.plans] == ["first", "first"]
    last = {p.channel: LastNotification(T0, p.record_firing, p.record_resolved) for p in d1.plans}
    done = Alert(a.event, cleared(a.event))
    d2 = decide(
        route=route,
        alerts=[done],
        channels=[ChannelView("mail"), ChannelView("quiet", send_resolved=False)],
        last=last,
        now=T0 + timedelta(minutes=1),
    )
    assert [(p.channel, p.reason) for p in d2.plans] == [("mail", "resolved")]
    assert d2.plans[0].resolved == (done,)
    assert d2.plans[0].firing == ()
    assert not d2.close  # open until the resolved message is sent: it may still expire
    told = {**last, "mail": LastNotification(T0, d2.plans[0].record_firing, d2.plans[0].record_resolved)}

    def next_flush(last: dict[str, LastNotification]) -> GroupDecision:
        return decide(
            route=route,
            alerts=[done],
            channels=[ChannelView("mail"), ChannelView("quiet", send_resolved=False)],
            last=last,
            now=T0 + timedelta(minutes=2),
        )

    d3 = next_flush(told)
    assert d3.plans == ()
    assert d3.close
    # The resolved message expired: the store leaves it out of ``last``, so it is planned again.
    d4 = next_flush(last)
    assert [(p.channel, p.reason) for p in d4.plans] == [("mail", "resolved")]
    assert not d4.close


def test_in_flight_channel_waits_and_group_stays_open() -> None:
    route = Route("default", ("mail",), group_wait=0)
    a = Alert(violation(1), cleared(violation(1)))
    d = decide(
        route=route,
        alerts=[a],
        channels=[ChannelView("mail")],
        last={},
        in_flight=frozenset({"mail"}),
        now=T0,
    )
    assert d.plans == ()
    assert not d.close


def test_silences_one_off_and_weekly_mute_but_keep_alert() -> None:
    with pytest.raises(ValueError, match="reason"):
        Silence("s", reason=" ", author="ops", ends_at=T0)
    with pytest.raises(ValueError, match="author"):
        Silence("s", reason="deploy", author="", ends_at=T0)
    once = Silence(
        "deploy",
        reason="deploy",
        author="ops",
        models=("llama*",),
        starts_at=T0,
        ends_at=T0 + timedelta(hours=1),
    )
    # Saturday 23:00 to Sunday 01:00 Paris time, crossing midnight
    weekly = Silence(
        "nightly",
        reason="reindex",
        author="ops",
        kind="maintenance",
        rules=("r2",),
        weekly=Weekly(parse_days(["sat"]), time(23), time(1), "Europe/Paris"),
    )
    llama, qwen_r2 = Alert(violation(1)).labels, Alert(violation(2, model="qwen", rule="R2")).labels
    assert muting([once], llama, T0 + timedelta(minutes=10)) is once
    assert muting([once], llama, T0 + timedelta(hours=2)) is None
    assert muting([once], qwen_r2, T0) is None
    sunday_0030_paris = datetime(2026, 3, 7, 23, 30, tzinfo=UTC)  # UTC+1 in March
    assert muting([weekly], qwen_r2, sunday_0030_paris) is weekly
    assert muting([weekly], qwen_r2, sunday_0030_paris + timedelta(hours=1)) is None
    assert muting([weekly], qwen_r2, sunday_0030_paris - timedelta(days=1)) is None
    route = Route("default", ("mail",), group_wait=0)
    d = decide(
        route=route,
        alerts=[Alert(violation(1))],
        channels=[ChannelView("mail")],
        last={},
        silences=[once],
        now=T0,
    )
    assert d.plans == ()
    assert d.muted == {violation(1).episode_id: "deploy"}


def test_classify_http_and_retry_after() -> None:
    assert classify_http(200, {}) is None
    e500, e404 = classify_http(503, {}), classify_http(404, {})
    assert e500 is not None
    assert e500.retryable
    assert e404 is not None
    assert not e404.retryable
    e429 = classify_http(429, {"Retry-After": "7"})
    assert e429 is not None
    assert e429.retryable
    assert e429.retry_after == 7
    assert (
        parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC))
        == 30
    )
    assert parse_retry_after("soon") is None


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial=1, factor=2, max_delay=10, jitter=0.25)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        base = min(10, 2 ** (n - 1))
        assert base * 0.75 <= d <= base * 1.25
    assert policy.delay(1, rng, retry_after=7) == 7
    # Retry-After is capped at max_delay: the longest wait stays within the lease check's bound.
    assert policy.delay(1, rng, retry_after=3600) == 10
    assert policy.delay(6, rng, retry_after=3600) <= policy.longest_sleep == 12.5


async def test_send_with_retry_retries_until_success_and_records_attempts() -> None:
    answers: list[Exception | str] = [
        DeliveryError("HTTP 500", retryable=True, status=500),
        DeliveryError("HTTP 429", retryable=True, retry_after=5, status=429),
        "ok",
    ]
    slept: list[float] = []
    seen: list[bool] = []

    async def send() -> str:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def sleep(d: float) -> None:
        slept.append(d)

    async def on_attempt(att: Attempt) -> None:
        seen.append(att.ok)

    clock = iter(range(1000)).__next__
    out = await send_with_retry(
        send,
        policy=RetryPolicy(initial=1, deadline=100),
        rng=random.Random(0),
        monotonic=lambda: float(clock()),
        sleep=sleep,
        on_attempt=on_attempt,
    )
    assert out.status == "sent"
    assert len(out.attempts) == 3
    assert seen == [False, False, True]
    assert slept[1] >= 5  # Retry-After honoured


async def test_send_with_retry_stops_on_permanent_and_at_deadline() -> None:
    async def bad() -> str:
        raise DeliveryError("HTTP 404", retryable=False, status=404)

    async def sleep(_: float) -> None:
        return None

    out = await send_with_retry(bad, policy=RetryPolicy(), sleep=sleep)
    assert out.status == "failed"
    assert len(out.attempts) == 1

    async def down() -> str:
        raise TimeoutError

    t = [0.0]

    async def sleep_clock(d: float) -> None:
        t[0] += d

    out = await send_with_retry(
        down, policy=RetryPolicy(initial=1, deadline=20, jitter=0), sleep=sleep_clock, monotonic=lambda: t[0]
    )
    assert out.status == "expired"
    assert next(a.detail for a in out.attempts) == "timed out"
    assert len(out.attempts) == 5  # waits 1, 2, 4, 8 (=15 s), the next 16 s would pass 20 s


def test_config_file_yaml_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "alerter.yaml"
    path.write_text(
        """
defaults: {group_wait: 10s, repeat_interval: 1h}
channels:
  - name: oncall
    kind: email
    host: smtp.example.com
    sender: a@example.com
    recipients: [b@example.com, c@example.com]
    password_env: PW
  - {name: chat, kind: slack, url_env: SLACK}
  - {name: pager, kind: pagerduty, routing_key_env: PD, events_url: "http://127.0.0.1:9/v2/enqueue"}
routes:
  - {name: pager, channels: [pager], rules: [R1], models: ["llama*"], group_interval: 2m,
     continue_matching: true}
  - {name: rest, channels: [oncall, chat], severities: [critical, warning]}
silences:
  - {id: nightly, kind: maintenance, reason: reindex, author: ops,
     weekly: {days: [sat, sun], start: "02:00", end: "04:00"}}
"""
    )
    env = Env({"PW": "hunter2", "SLACK": "https://hooks.slack.com/services/T/B/X", "PD": "key"})
    rt = build_runtime(load_file(path), env, {}, timings=Timings())
    assert [r.name for r in rt.routes] == ["pager", "rest"]
    assert rt.routes[0].group_wait == 10
    assert rt.routes[0].group_interval == 120
    assert rt.routes[0].repeat_interval == 3600
    email = rt.channels["oncall"].email
    assert email is not None
    assert email.recipients == ("b@example.com", "c@example.com")
    assert "hunter2" not in repr(rt.channels["oncall"])
    assert "hooks.slack" not in repr(rt.channels["chat"])
    assert rt.silences[0].weekly is not None
    with pytest.raises(ConfigError, match="PD"):
        build_runtime(load_file(path), Env({"PW": "x", "SLACK": "y"}), {}, timings=Timings())
    path.write_text("routes: [{name: r, channels: [nope]}]")
    with pytest.raises(ConfigError, match="unknown channels"):
        build_runtime(load_file(path), Env({}), {}, timings=Timings())
    path.write_text("routez: []")
    with pytest.raises(ConfigError, match="routez"):
        load_file(path)
    toml = tmp_path / "alerter.toml"
    toml.write_text('[[channels]]\nname = "hook"\nkind = "webhook"\nurl = "http://127.0.0.1:9/h"\n')
    assert build_runtime(load_file(toml), Env({}), {}, timings=Timings()).channels["hook"].kind == "webhook"
    assert parse_duration("5m", "x") == 300
    assert parse_duration(2, "x") == 2
    with pytest.raises(ConfigError):
        parse_duration("soon", "x")


def test_config_file_monthly_silences(tmp_path: Path) -> None:
    path = tmp_path / "alerter.yaml"
    path.write_text(
        """
silences:
  - {id: patch-sunday, kind: maintenance, reason: OS patches, author: ops,
     monthly: {weekdays: ["first sun"], start: "02:00", end: "04:00", timezone: Europe/Berlin}}
  - {id: billing-run, reason: month-end batch, author: ops,
     monthly: {days: [15], start: "22:00", end: "01:00"}}
"""
    )
    rt = build_runtime(load_file(path), Env({}), {}, timings=Timings())
    patch, billing = rt.silences
    assert patch.monthly is not None
    assert billing.monthly is not None
    assert patch.monthly.weekdays == frozenset({(1, 6)})
    assert patch.active_at(datetime(2026, 3, 1, 1, 30, tzinfo=UTC))  # 02:30 in Berlin
    assert billing.monthly.days == frozenset({15})
    assert billing.active_at(datetime(2026, 3, 16, 0, 30, tzinfo=UTC))
    assert not billing.active_at(datetime(2026, 3, 16, 1, 0, tzinfo=UTC))
    bad = {
        'weekdays: ["fifth sun"], start: "02:00", end: "04:00"': r"\[m\]\.monthly\.weekdays: unknown nth",
        'days: [32], start: "02:00", end: "04:00"': r"\[m\]\.monthly: days of the month are 1\.\.31",
        'start: "02:00", end: "04:00"': r"\[m\]\.monthly: a monthly window needs",
        'days: [1], start: "2am", end: "04:00"': r"\[m\]\.monthly\.start='2am'",
        'days: [1], start: "02:00", end: "04:00", timezone: Mars/Base': r"unknown time zone 'Mars/Base'",
    }
    for monthly, message in bad.items():
        path.write_text(f"silences: [{{id: m, reason: r, author: a, monthly: {{{monthly}}}}}]")
        with pytest.raises(ConfigError, match=message):
            build_runtime(load_file(path), Env({}), {}, timings=Timings())
    path.write_text(
        "silences: [{id: m, reason: r, author: a, monthly: {days: [1], start: '01:00', end: '02:00'},"
        " weekly: {days: [mon], start: '01:00', end: '02:00'}}]"
    )
    with pytest.raises(ConfigError, match="weekly or monthly, not both"):
        build_runtime(load_file(path), Env({}), {}, timings=Timings())
    path.write_text(
        "silences: [{id: m, reason: r, author: a, monthly: {dayz: [1], start: '01:00', end: '02:00'}}]"
    )
    with pytest.raises(ConfigError, match="dayz"):
        load_file(path)


def test_api_settings_overlay() -> None:
    env = Env({"LLMSCOPE_SLACK_WEBHOOK_URL": "http://x/hook"})
    settings: dict[str, object] = {
        "alert_on_rule": '["R1", "R2"]',
        "slack_enabled": "false",
        "email_enabled": True,
        "smtp_host": '"smtp.local"',
        "smtp_port": "2525",
        "smtp_to": "a@x.io, b@x.io",
        "smtp_password": "s3cret",
    }
    rt = build_runtime(None, env, settings, timings=Timings())
    assert rt.allowed_rules == frozenset({"R1", "R2"})
    assert not rt.channels["slack"].enabled
    email = rt.channels["email"].email
    assert email is not None
    assert email.host == "smtp.local"
    assert email.port == 2525
    assert email.recipients == ("a@x.io", "b@x.io")
    assert email.password.get() == "s3cret"
    assert [c.name for c in rt.enabled_channels()] == ["email"]


def test_a_channel_set_up_in_the_api_settings_is_off_without_its_switch() -> None:
    """The API shows ``alert.<kind>.enabled`` as false when there is no row: so does the alerter."""
    env = Env({"LLMSCOPE_SLACK_WEBHOOK_URL": "http://x/hook", "LLMSCOPE_PAGERDUTY_ROUTING_KEY": "rk"})
    settings: dict[str, object] = {
        "alert.email.smtp_host": '"mail.local"',
        "alert.email.recipients": '["a@x.io"]',
        "alert.webhook.url": '"https://hooks.example.com/in"',
        "alert.pagerduty.routing_key": '"rk2"',  # overrides the environment's key: now from settings
    }
    rt = build_runtime(None, env, settings, timings=Timings())
    assert sorted(rt.channels) == ["email", "pagerduty", "slack", "webhook"]
    # slack comes from the environment only: no switch needed, as documented
    assert [c.name for c in rt.enabled_channels()] == ["slack"]
    on = {**settings, "alert.email.enabled": "true", "alert.webhook.enabled": "true"}
    rt = build_runtime(None, env, on, timings=Timings())
    assert sorted(c.name for c in rt.enabled_channels()) == ["email", "slack", "webhook"]


def test_the_api_settings_keys() -> None:
    """The keys of llmscope.api.known_settings, as JSON values in the settings table."""
    settings: dict[str, object] = {
        "alert.min_severity": '"warning"',
        "alert.on_rules": "[]",
        "alert.group_wait_s": "0",
        "alert.repeat_interval_s": "600",
        "alert.email.enabled": "true",
        "alert.email.recipients": '["a@x.io"]',
        "alert.email.smtp_host": '"mail.local"',
        "alert.email.smtp_port": "465",
        "alert.email.tls": '"ssl"',
        "alert.email.from_addr": '"scope@x.io"',
        "alert.email.smtp_password": '"pw"',
        "alert.slack.enabled": "false",
        "alert.slack.webhook_url": '"https://hooks.slack.com/services/T/B/X"',
        "alert.webhook.enabled": "true",
        "alert.webhook.url": '"https://hooks.example.com/in"',
        "alert.webhook.signing_secret": '"k"',
        "alert.pagerduty.enabled": "true",
        "alert.pagerduty.routing_key": '"rk"',
        "dashboard.base_url": '"https://scope.example"',
    }
    rt = build_runtime(None, Env({}), settings, timings=Timings())
    assert rt.allowed_rules is None
    (route,) = rt.routes
    assert route.severities == ("critical", "warning")
    assert route.group_wait == 0
    assert route.repeat_interval == 600
    assert sorted(c.name for c in rt.enabled_channels()) == ["email", "pagerduty", "webhook"]
    email = rt.channels["email"].email
    assert email is not None
    assert (email.host, email.port, email.security, email.sender) == ("mail.local", 465, "ssl", "scope@x.io")
    assert rt.channels["webhook"].secret.get() == "k"
    assert rt.channels["pagerduty"].secret.get() == "rk"
    assert rt.public_url == "https://scope.example"
