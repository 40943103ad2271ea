"""Every NATS subject and stream name LLMscope uses is built here and nowhere else.

Subjects (``<m>`` and ``<p>`` are escaped tokens, see :func:`encode_token`):
- ``llmscope.telemetry.v1.<provider>.<model>``      telemetry.v1
- ``llmscope.violations.v1.<provider>.<model>.<rule>``  violation.v1 (open and cleared)
- ``llmscope.deadletter.v1.<source>``               deadletter.v1
- ``llmscope.control.v1.spc.rebaseline``            request: re-baseline an SPC chart
- ``llmscope.control.v1.spc.rebaseline.model``      request: re-baseline every chart of a model
- ``llmscope.control.v1.alerter.<op>``              requests to the alerter (llmscope.proto.control):
  ``test``, ``incident``, ``silences.create``, ``silences.list``, ``silences.expire``,
  ``notifications``
- ``llmscope.incidents.v1.<provider>.<change>``     incident.v1 (opened, updated, acknowledged,
  resolved, analyzed)
- ``llmscope.traffic_minute.v1.<provider>.<model>`` traffic_minute.v1 (a minute of real traffic)
- ``llmscope.traffic_histogram.v1.<provider>.<model>`` traffic_histogram.v1 (a GenAI metric's data
  point, from the OTLP metrics receiver)
- ``llmscope.violation_actions.v1.<provider>.<action>`` violation_action.v1 (a person acknowledged
  or resolved a violation through the API: ``acknowledged``, ``resolved``)
- ``llmscope.control.v1.api.telemetry.<op>``       the alerter's requests to the API for telemetry
  (llmscope.proto.telemetry_context): ``context``, ``outages``, ``points``
- ``llmscope.control.v1.api.violations.repaged``  the alerter tells the API of violations paged
  again after a hand resolution (llmscope.proto.repage)
- ``llmscope.live.v1.api``                          core NATS only: the API's live notices
  (:mod:`llmscope.proto.live`)
"""

from __future__ import annotations

import functools
import re
import string

PREFIX = "llmscope"

STREAM_TELEMETRY = "LLMSCOPE_TELEMETRY"
STREAM_VIOLATIONS = "LLMSCOPE_VIOLATIONS"
STREAM_DEADLETTER = "LLMSCOPE_DEADLETTER"
STREAM_INCIDENTS = "LLMSCOPE_INCIDENTS"
STREAM_TRAFFIC = "LLMSCOPE_TRAFFIC"
STREAM_VIOLATION_ACTIONS = "LLMSCOPE_VIOLATION_ACTIONS"

TELEMETRY_ALL = f"{PREFIX}.telemetry.v1.>"
VIOLATIONS_ALL = f"{PREFIX}.violations.v1.>"
DEADLETTER_ALL = f"{PREFIX}.deadletter.v1.>"
INCIDENTS_ALL = f"{PREFIX}.incidents.v1.>"
TRAFFIC_MINUTES_ALL = f"{PREFIX}.traffic_minute.v1.>"
TRAFFIC_HISTOGRAMS_ALL = f"{PREFIX}.traffic_histogram.v1.>"
VIOLATION_ACTIONS_ALL = f"{PREFIX}.violation_actions.v1.>"

_SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_ESCAPE = "~"


MAX_TOKEN_LENGTH = 1024
"""Longest encoded token a name may make. nats-server refuses a control line (``PUB <subject>
<reply> <size>``) over 4 KB and drops the connection; the longest subject or key LLMscope builds
from names, a chart's KV key ``$KV.<bucket>.<provider>.<model>.<target>.<prompt>.<metric>``,
holds three such tokens (3 KB) and stays well inside it with its reply subject."""


def check_token(field: str, value: str) -> None:
    """ValueError naming ``field`` when ``value`` would encode to a token over MAX_TOKEN_LENGTH."""
    # A character encodes to at most 12 (4 UTF-8 bytes, 3 each): short names need no encoding.
    if len(value) * 12 > MAX_TOKEN_LENGTH and len(encode_token(value)) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"`{field}` is too long: {len(encode_token(value))} bytes as a subject token, at most "
            f"{MAX_TOKEN_LENGTH} (letters, digits, - and _ count 1, every other UTF-8 byte 3)"
        )


@functools.lru_cache(maxsize=8192)
def encode_token(value: str) -> str:
    """Map any non-empty string to one safe subject token, reversibly.

    Letters, digits, ``-`` and ``_`` stay as they are; every other character becomes ``~`` and
    the upper-case hex of its UTF-8 bytes (``llama3.1:8b`` -> ``llama3~2E1~3A8b``). No ``.``,
    ``*``, ``>``, whitespace or ``~``-ambiguity can leak into the token. Cached: the same few
    provider and model names are encoded for every event.
    """
    if not value:
        raise ValueError("a subject token cannot be empty")
    if _SAFE_CHARS.issuperset(value):
        return value
    return "".join(ch if ch in _SAFE_CHARS else _escape(ch) for ch in value)


def _escape(ch: str) -> str:
    return "".join(f"{_ESCAPE}{b:02X}" for b in ch.encode())


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`; raises ValueError on a token it could not have made."""
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == _ESCAPE:
            hex_part = token[i + 1 : i + 3]
            if len(hex_part) != 2 or not re.fullmatch(r"[0-9A-F]{2}", hex_part):
                raise ValueError(f"bad escape in subject token {token!r} at {i}")
            raw.append(int(hex_part, 16))
            i += 3
        elif ch in _SAFE_CHARS:
            raw.extend(ch.encode())
            i += 1
        else:
            raise ValueError(f"character {ch!r} cannot appear in an encoded token")
    return raw.decode()


def telemetry(provider: str, model: str) -> str:
    return f"{PREFIX}.telemetry.v1.{encode_token(provider)}.{encode_token(model)}"


def violations(provider: str, model: str, rule: str) -> str:
    return f"{PREFIX}.violations.v1.{encode_token(provider)}.{encode_token(model)}.{encode_token(rule)}"


def violations_for_model(provider: str, model: str) -> str:
    """Wildcard for every violation of one model."""
    return f"{PREFIX}.violations.v1.{encode_token(provider)}.{encode_token(model)}.*"


def violation_actions(provider: str, action: str) -> str:
    """Subject of a person's action on a violation (``violation_action.v1``)."""
    return f"{PREFIX}.violation_actions.v1.{encode_token(provider)}.{encode_token(action)}"


def traffic_histogram(provider: str, model: str) -> str:
    """Subject of a model's GenAI metric data points (``traffic_histogram.v1``)."""
    return f"{PREFIX}.traffic_histogram.v1.{encode_token(provider)}.{encode_token(model)}"


def traffic_minute(provider: str, model: str) -> str:
    """Subject of a model's per-minute traffic subgroups (``traffic_minute.v1``)."""
    return f"{PREFIX}.traffic_minute.v1.{encode_token(provider)}.{encode_token(model)}"


def deadletter(source: str) -> str:
    return f"{PREFIX}.deadletter.v1.{encode_token(source)}"


TELEMETRY_PUBLISHED = f"{PREFIX}.telemetry.v1.*.*"
"""What probers publish to; the telemetry stream stores it with a partition token appended."""


def telemetry_stored(partitions: int) -> str:
    """Subject-transform destination: the published subject plus the model's partition, ``k`` in
    ``0 .. partitions-1`` (nats-server hashes the provider and model tokens, FNV-1a 32)."""
    base = f"{PREFIX}.telemetry.v1"
    return f"{base}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1,2)}}}}"


def telemetry_partition_filter(partition: int) -> str:
    """Stream-consumer filter for one telemetry partition (stored subjects)."""
    return f"{PREFIX}.telemetry.v1.*.*.{partition}"


def parse_telemetry(subject: str) -> tuple[str, str]:
    """(provider, model) of a telemetry subject, as published or as stored (with a partition)."""
    parts = subject.split(".")
    stored = len(parts) == 6 and parts[5].isdigit()
    if not (len(parts) == 5 or stored) or parts[:3] != [PREFIX, "telemetry", "v1"]:
        raise ValueError(f"not a telemetry.v1 subject: {subject!r}")
    return decode_token(parts[3]), decode_token(parts[4])


def parse_violation(subject: str) -> tuple[str, str, str]:
    """(provider, model, rule) of a violation subject."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[:3] != [PREFIX, "violations", "v1"]:
        raise ValueError(f"not a violations.v1 subject: {subject!r}")
    return decode_token(parts[3]), decode_token(parts[4]), decode_token(parts[5])


def incidents(provider: str, change: str) -> str:
    """Subject of one incident change (``opened``, ``updated``, ``acknowledged``, ...)."""
    return f"{PREFIX}.incidents.v1.{encode_token(provider)}.{encode_token(change)}"


def parse_incident(subject: str) -> tuple[str, str]:
    """(provider, change) of an incident subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:3] != [PREFIX, "incidents", "v1"]:
        raise ValueError(f"not an incidents.v1 subject: {subject!r}")
    return decode_token(parts[3]), decode_token(parts[4])


SPC_CHARTS_BUCKET = "llmscope_spc_charts"
"""JetStream KV bucket of SPC charts as readers see them, keyed by chart key (written by the SPC
engine when what it shows changed; contract: ``llmscope.proto.charts``)."""

SPC_STATE_BUCKET = "llmscope_spc_state"
"""JetStream KV bucket of the SPC engine's private chart state (file storage, history 1): one
record per probe series and per availability chart, written every snapshot interval, read by the
engine alone when it takes a partition (``llmscope.spc_engine.store``). Not a contract."""


def spc_rebaseline() -> str:
    """Request subject for re-baselining an SPC chart (core NATS request/reply, JSON body)."""
    return f"{PREFIX}.control.v1.spc.rebaseline"


def spc_rebaseline_model() -> str:
    """Request subject for re-baselining every SPC chart of a model (core NATS request/reply)."""
    return f"{PREFIX}.control.v1.spc.rebaseline.model"


SETTINGS_BUCKET = "llmscope_settings"
"""JetStream KV bucket of the API's settings (the settings page), keyed by :func:`kv_key` of the
setting's key, the value its JSON text; written by the API (it owns the ``settings`` table and
mirrors it here), read by the alerter. A missing key means not set."""

SPC_MEMBERS_BUCKET = "llmscope_spc_members"
"""JetStream KV bucket where SPC engine replicas announce themselves (partition leases)."""

MODELS_BUCKET = "llmscope_models"
"""JetStream KV bucket of model switches (enabled or not), keyed by :func:`kv_key` of provider
and model; written by the API, watched by the prober. A missing key means enabled."""

SPC_CONFIG_BUCKET = "llmscope_spc_config"
"""JetStream KV bucket of per-model SPC chart overrides, keyed by :func:`kv_key` of provider and
model; written by the API, watched by the SPC engine (contract: ``llmscope.proto.chartconfig``)."""


def kv_key(*parts: str) -> str:
    """A reversible KV key from parts: :func:`encode_token` of each, joined by ``.``, with the
    escape ``~`` written ``=`` (KV keys allow only ``[-/_=.a-zA-Z0-9]``)."""
    return ".".join(encode_token(p) for p in parts).replace(_ESCAPE, "=")


def parse_kv_key(key: str, parts: int) -> tuple[str, ...]:
    """Inverse of :func:`kv_key`; ValueError when ``key`` does not have ``parts`` parts."""
    tokens = key.split(".")
    if len(tokens) != parts:
        raise ValueError(f"expected a key of {parts} parts, got {key!r}")
    return tuple(decode_token(t.replace("=", _ESCAPE)) for t in tokens)


# The alerter's control requests (core NATS request/reply, JSON bodies of llmscope.proto.control).
ALERTER_CONTROL_QUEUE = "alerter"
"""Queue group the alerter replicas answer control requests in: one answer per request."""


def alerter_test() -> str:
    """Request subject: send a test message through one channel (``AlertTestRequest``)."""
    return f"{PREFIX}.control.v1.alerter.test"


def alerter_incident_action() -> str:
    """Request subject: acknowledge or resolve an incident (``IncidentActionRequest``)."""
    return f"{PREFIX}.control.v1.alerter.incident"


def alerter_silence_create() -> str:
    """Request subject: create a silence or maintenance window (``SilenceCreateRequest``)."""
    return f"{PREFIX}.control.v1.alerter.silences.create"


def alerter_silence_list() -> str:
    """Request subject: list silences (``SilenceListRequest``)."""
    return f"{PREFIX}.control.v1.alerter.silences.list"


def alerter_silence_expire() -> str:
    """Request subject: expire a silence now (``SilenceExpireRequest``)."""
    return f"{PREFIX}.control.v1.alerter.silences.expire"


def alerter_notifications() -> str:
    """Request subject: query the notification log (``NotificationQuery``)."""
    return f"{PREFIX}.control.v1.alerter.notifications"


# The alerter's requests to the API (core NATS request/reply, llmscope.proto.telemetry_context).
API_CONTROL_QUEUE = "api"
"""Queue group the API processes answer the alerter's requests in: one answer per request."""


def api_telemetry_context() -> str:
    """Request subject: the probes around violations (``ContextRequest``)."""
    return f"{PREFIX}.control.v1.api.telemetry.context"


def api_telemetry_outages() -> str:
    """Request subject: an outage's failed probes (``OutageRequest``)."""
    return f"{PREFIX}.control.v1.api.telemetry.outages"


def api_telemetry_points() -> str:
    """Request subject: probes by telemetry id (``PointsRequest``)."""
    return f"{PREFIX}.control.v1.api.telemetry.points"


def api_violations_repaged() -> str:
    """Request subject: violations the alerter paged again after a hand resolution
    (``llmscope.proto.repage.RepagedRequest``): the API reopens its copy of each."""
    return f"{PREFIX}.control.v1.api.violations.repaged"


PERSISTER = "api-persister"
"""The persister's dead-letter source and the prefix of its durable consumers' names
(``<prefix>-telemetry``, ``-violations``, ``-deadletter``, ``-incidents``), in the API or apart."""
PERSISTER_STREAMS = {
    STREAM_TELEMETRY: "telemetry",
    STREAM_VIOLATIONS: "violations",
    STREAM_DEADLETTER: "deadletter",
    STREAM_INCIDENTS: "incidents",
}
"""The streams the persister stores, each with its durable's suffix."""


def persister_durable(stream: str, prefix: str = PERSISTER) -> str:
    """The persister's durable consumer of ``stream`` (one of :data:`PERSISTER_STREAMS`)."""
    return f"{prefix}-{PERSISTER_STREAMS[stream]}"


def api_live() -> str:
    """Core NATS subject (no stream) of :class:`llmscope.proto.live.LiveNotice`: what the API
    process running the persister stored or saw, for the open tabs of every API process."""
    return f"{PREFIX}.live.v1.api"
