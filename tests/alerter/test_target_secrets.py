"""A target's secrets (a URL's password, an API key in its query) never reach a channel's reader:
messages, titles, links, the incident analysis and Alertmanager's labels print the target as the
dashboard does (``llmscope.proto.redaction``)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from msgspec import structs

from llmscope.alerter import messages as m
from llmscope.alerter.analysis import summarize
from llmscope.alerter.messages import FailedProbe, Outage
from llmscope.alerter.model import labels_of
from llmscope.proto.redaction import HIDDEN, redacted
from tests.alerter.factories import T0, violation
from tests.alerter.rendering import channel_texts
from tests.alerter.test_messages import notification

TARGET = "https://bot:s3cret-pw@gw.example/v1?api_key=k3y-value&region=eu"
SECRETS = ("s3cret-pw", "k3y-value")


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    assert "gw.example" in text  # the target is named,
    assert HIDDEN in text  # its secrets hidden


def test_no_channel_prints_a_targets_secrets() -> None:
    base = notification("firing")
    [alert] = base.firing
    n = replace(base, firing=(replace(alert, event=structs.replace(alert.event, target=TARGET)),))
    texts = channel_texts(n)
    for name, text in texts.items():
        if name == "webhook.json":
            # The machine-readable events are violation.v1 as published on the bus (the
            # contract other teams read); the words a person reads are printed.
            body = json.loads(text)
            assert body["firing"][0]["target"] == TARGET
            _clean(body["text"])
            continue
        _clean(text)
    link = urlsplit(m.chart_url("https://scope.example", n.firing[0].event))
    assert parse_qs(link.query)["target"] == [redacted(TARGET)]  # the dashboard maps it back


def test_the_incident_analysis_prints_the_target_without_its_secrets() -> None:
    shift = structs.replace(violation(1), target=TARGET)
    _clean(summarize([shift])[0])
    down = structs.replace(violation(2, rule="AVAILABILITY", metric="availability", value=3.0), target=TARGET)
    refused = tuple(FailedProbe(T0 + timedelta(seconds=9 - i), "refused", None, "refused") for i in range(3))
    outage = Outage(count=3, since=T0, last_success=T0 - timedelta(seconds=1), recent=refused)
    _clean(summarize([down], outages={down.episode_id: outage})[0])


def test_routes_groups_and_silences_match_the_stored_target() -> None:
    # Only what is printed is redacted: a silence on the stored target still matches it.
    assert labels_of(structs.replace(violation(1), target=TARGET))["target"] == TARGET
