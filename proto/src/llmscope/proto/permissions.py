"""The NATS subjects each LLMscope service may publish and subscribe to, one user per service.

``llmscope up`` writes these into the embedded nats-server's configuration (one generated
password per user); ``python -m llmscope.stack.natsconf`` writes them for compose and Kubernetes
(``deploy/nats/users.conf``, ``deploy/k8s/components/nats-users``), and an operator running their
own NATS gives the same lists to the users they create. Found by running every service under
``up`` with these users and reading nats-server's "Permissions Violation" lines
(tests/stack/test_nats_permissions.py and the whole-stack test), not guessed; keep them next to
:mod:`llmscope.proto.subjects` so a new subject comes with its permission.

The prober is the one service that may run on other hosts, so its user is the narrowest: it
publishes telemetry and reads the model switches, and it cannot publish a violation, an
incident or a control request, create, change or delete a stream, or read anyone's replies.
The others manage their consumers (``$JS.API.>``) as they did with one user, less creating,
changing, deleting or purging a stream (a key-value bucket is a stream, ``KV_<bucket>``) or
deleting a stored message. Streams and buckets are made by the setup step
(:mod:`llmscope.stack.setup`, ``llmscope setup``) as the :data:`SETUP` user, before or while the
services start; the services run with ``LLMSCOPE_MANAGE_STREAMS=false`` and only check them
(:mod:`llmscope.bus.layout`).

Every user reads replies on its own inbox prefix, ``_INBOX.<user>``
(:func:`inbox_prefix`, which :func:`llmscope.bus.connection.connect` takes from the user in
the URL): with the shared ``_INBOX.>`` any user could read the answers meant for others.
Services that answer requests (the SPC engine, the alerter) publish their answers through
nats-server's ``allow_responses``, only to the reply subject of a request they received.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmscope.proto import subjects

PROBER = "prober"
SPC_ENGINE = "spc-engine"
ALERTER = "alerter"
API = "api"
PERSISTER = "persister"
"""The persister run apart (``llmscope persister``: compose's profile persister-apart,
components/persister-apart): stores four streams, publishes its dead letters and the dashboards'
live notices, watches the chart bucket; nothing else. An API running its persister in-process
does it as the `api` user."""
SETUP = "setup"
"""The setup step (``llmscope setup``): creates, updates and deletes streams and buckets, nothing
else (it cannot publish an event or read one)."""
OPERATOR = "operator"
"""The CLI commands an operator runs against the stack (``llmscope deadletter``, ``llmscope spc
rebaseline``, ``llmscope sim``...): unrestricted, like the person holding the data directory."""

SERVICE_USERS = (PROBER, SPC_ENGINE, ALERTER, API)
"""The users ``llmscope up`` starts services as; each service's NATS_URL carries its own."""

USERS = (*SERVICE_USERS, PERSISTER, SETUP, OPERATOR)


def inbox_prefix(user: str) -> str:
    """The prefix of ``user``'s reply subjects (nats-py's ``inbox_prefix``)."""
    return f"_INBOX.{subjects.encode_token(user)}"


@dataclass(frozen=True)
class Permissions:
    """Allow lists of one NATS user; a subject not listed is refused by the server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """Publish to the reply subject of a request received (for request/reply servers)."""
    deny_publish: tuple[str, ...] = ()
    """Refused even where ``publish`` allows it (nats-server's deny wins over allow)."""


# JetStream's API, message acks, flow-control answers (push and ordered consumers: KV watchers).
_JS_ALL = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")
# ... but no service creates, changes, deletes or purges a stream (nor a bucket: a stream) or
# deletes a stored message: the setup user makes and changes streams, the operator removes
# (``llmscope deadletter`` deletes a replayed dead letter).
_JS_STREAM_MANAGEMENT = ("$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>")
_JS_DESTRUCTIVE = (*_JS_STREAM_MANAGEMENT, "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")


def _kv(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def _kv_reads(bucket: str) -> tuple[str, ...]:
    """Reading a bucket's values: a message get (direct or not) or a consumer (a watcher)."""
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
    )


def _prober() -> Permissions:
    models = f"KV_{subjects.MODELS_BUCKET}"
    return Permissions(
        publish=(
            subjects.TELEMETRY_PUBLISHED,
            # That the telemetry stream exists before publishing (no create, update or delete).
            f"$JS.API.STREAM.INFO.{subjects.STREAM_TELEMETRY}",
            # Watching the model switches: the bucket's stream, an ordered consumer of it.
            f"$JS.API.STREAM.INFO.{models}",
            f"$JS.API.CONSUMER.CREATE.{models}",
            f"$JS.API.CONSUMER.CREATE.{models}.>",
            f"$JS.API.CONSUMER.INFO.{models}.>",
            f"$JS.API.CONSUMER.DELETE.{models}.>",
            f"$JS.FC.{models}.>",
        ),
        subscribe=(f"{inbox_prefix(PROBER)}.>",),
    )


def _spc_engine(charts_bucket: str, state_bucket: str) -> Permissions:
    return Permissions(
        publish=(
            subjects.VIOLATIONS_ALL,
            subjects.DEADLETTER_ALL,
            subjects.TRAFFIC_MINUTES_ALL,
            _kv(charts_bucket),
            # Its own chart state: nobody else writes it (nor needs to read it).
            _kv(state_bucket),
            _kv(subjects.SPC_MEMBERS_BUCKET),
            *_JS_ALL,
        ),
        subscribe=(f"{subjects.PREFIX}.control.v1.spc.>", f"{inbox_prefix(SPC_ENGINE)}.>"),
        allow_responses=True,
        # The API's settings hold channel secrets the engine has no use for.
        deny_publish=(*_JS_DESTRUCTIVE, *_kv_reads(subjects.SETTINGS_BUCKET)),
    )


def _alerter() -> Permissions:
    return Permissions(
        # It reads the API's settings bucket ($KV.<bucket> is only written to; reads are
        # $JS.API requests) and asks the API for telemetry context (llmscope.control.v1.api.>).
        publish=(
            subjects.INCIDENTS_ALL,
            subjects.DEADLETTER_ALL,
            f"{subjects.PREFIX}.control.v1.api.>",
            *_JS_ALL,
        ),
        subscribe=(f"{subjects.PREFIX}.control.v1.alerter.>", f"{inbox_prefix(ALERTER)}.>"),
        allow_responses=True,
        deny_publish=_JS_DESTRUCTIVE,
    )


def _api() -> Permissions:
    return Permissions(
        publish=(
            # POST /api/stats and the OTLP receiver.
            subjects.TELEMETRY_PUBLISHED,
            subjects.TRAFFIC_MINUTES_ALL,
            subjects.TRAFFIC_HISTOGRAMS_ALL,
            subjects.DEADLETTER_ALL,
            # Requests to the SPC engine and the alerter.
            f"{subjects.PREFIX}.control.v1.>",
            _kv(subjects.MODELS_BUCKET),
            _kv(subjects.SPC_CONFIG_BUCKET),
            # Its settings table mirrored for the alerter, and people's actions on violations.
            _kv(subjects.SETTINGS_BUCKET),
            subjects.VIOLATION_ACTIONS_ALL,
            # What the persister stored, for every API process's open tabs (the persister
            # apart does this as its own user, PERSISTER).
            subjects.api_live(),
            *_JS_ALL,
        ),
        # The dashboard's live feed.
        subscribe=(
            subjects.VIOLATIONS_ALL,
            subjects.INCIDENTS_ALL,
            subjects.api_live(),
            # The alerter's requests for telemetry context (the API owns the telemetry table).
            f"{subjects.PREFIX}.control.v1.api.>",
            f"{inbox_prefix(API)}.>",
        ),
        allow_responses=True,
        deny_publish=_JS_DESTRUCTIVE,
    )


def _persister(charts_bucket: str) -> Permissions:
    consumers: list[str] = []
    for stream in subjects.PERSISTER_STREAMS:
        durable = subjects.persister_durable(stream)
        # Its own durable consumers only: create them (with their filter), read their info (the
        # lag metrics), pull and ack their messages; never delete or pause them, nor touch
        # another consumer of the stream.
        consumers += (
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        )
    charts = f"KV_{charts_bucket}"
    return Permissions(
        publish=(
            subjects.deadletter(subjects.PERSISTER),
            subjects.api_live(),
            # That the streams and buckets are set up (LLMSCOPE_MANAGE_STREAMS=false).
            "$JS.API.STREAM.INFO.>",
            *consumers,
            # Watching the chart bucket for new baselines: an ordered consumer of it.
            f"$JS.API.CONSUMER.CREATE.{charts}",
            f"$JS.API.CONSUMER.CREATE.{charts}.>",
            f"$JS.API.CONSUMER.INFO.{charts}.>",
            f"$JS.API.CONSUMER.DELETE.{charts}.>",
            f"$JS.FC.{charts}.>",
        ),
        subscribe=(f"{inbox_prefix(PERSISTER)}.>",),
    )


def _setup() -> Permissions:
    return Permissions(
        publish=(
            "$JS.API.INFO",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.INFO.>",
            *_JS_STREAM_MANAGEMENT,
        ),
        subscribe=(f"{inbox_prefix(SETUP)}.>",),
    )


def service_permissions(
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET, state_bucket: str = subjects.SPC_STATE_BUCKET
) -> dict[str, Permissions]:
    """Each restricted user's permissions, the setup user's included (the operator has none:
    unrestricted); ``charts_bucket`` and ``state_bucket`` as ``LLMSCOPE_SPC_CHARTS_BUCKET`` and
    ``LLMSCOPE_SPC_STATE_BUCKET`` name them."""
    return {
        PROBER: _prober(),
        SPC_ENGINE: _spc_engine(charts_bucket, state_bucket),
        ALERTER: _alerter(),
        API: _api(),
        PERSISTER: _persister(charts_bucket),
        SETUP: _setup(),
    }
