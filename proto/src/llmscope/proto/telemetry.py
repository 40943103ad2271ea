"""``telemetry.v1``: one probe of one LLM endpoint, with the host's system metrics at that moment,
or one request of real traffic (``source="traffic"``, from the OTLP receiver).

Additions to ``telemetry.v1`` since its first release (fields with defaults, so an old message
still decodes; new literal values, so an *old reader* refuses a message that uses them: upgrade
readers, the SPC engine and the persister, before a writer that sends them):

- ``source``, ``service_name``, ``provider_name``, ``response_model``, ``error_type``,
  ``trace_id``: what the OTLP receiver knows about a request of real traffic;
- provider ``"other"``: traffic of a provider whose API flavour LLMscope does not speak
  (``provider_name`` says which, e.g. ``gcp.gemini``);
- status ``"error"``: a failed request of traffic whose ``error_type`` names no class below.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from llmscope.proto import subjects
from llmscope.proto.base import (
    EARLIEST,
    LATEST,
    Count,
    Event,
    Milliseconds,
    NonEmptyStr,
    Percent,
    check_name_values,
    check_text,
    check_ts,
)

ProbeKind = Literal["ollama", "openai", "anthropic"]
"""API flavours the prober speaks."""

ProviderKind = Literal["ollama", "openai", "anthropic", "other"]
"""API flavour of the endpoint; ``other`` only for traffic (see the module docstring)."""

Source = Literal["probe", "traffic"]
"""Where an event comes from: a probe (a fixed prompt, like for like) or a request of real traffic
(prompts and outputs of every length: never charted as if it were a probe)."""

TRAFFIC_PROMPT_PREFIX = "traffic:"
"""The one definition of real traffic: its prompt is ``traffic:<operation>`` and its source is
``traffic``; a probe has neither. :class:`TelemetryEvent` refuses an event whose two disagree, so
whatever reads one (the persister reads ``source``, the queries ``prompt_id``) reads the other."""
TRAFFIC_SQL = f"prompt_id LIKE '{TRAFFIC_PROMPT_PREFIX}%'"
"""SQL condition on a row with a ``prompt_id`` column: it is real traffic (see above)."""
PROBES_SQL = f"prompt_id NOT LIKE '{TRAFFIC_PROMPT_PREFIX}%'"
"""SQL condition on a row with a ``prompt_id`` column: it is a probe's (see above)."""


def traffic_prompt_id(operation: str) -> str:
    """The prompt id real traffic of one GenAI operation is stored and charted under
    (``traffic:chat``): never a probe prompt's (:data:`TRAFFIC_PROMPT_PREFIX`)."""
    return TRAFFIC_PROMPT_PREFIX + operation


def is_traffic_prompt(prompt_id: str) -> bool:
    """Whether a prompt id is real traffic's (``traffic:<operation>``): see :data:`TRAFFIC_PROMPT_PREFIX`."""
    return prompt_id.startswith(TRAFFIC_PROMPT_PREFIX)


ProbeStatus = Literal[
    "ok",
    "timeout",
    "refused",
    "http_4xx",
    "http_5xx",
    "rate_limited",
    "empty_response",
    "invalid_response",
    "truncated",
    "error",
    "overloaded",
]
"""Outcome of a probe. Anything but ``ok`` is a failed probe: it never enters latency charts.

``truncated``: a stream that ended early, with fewer output tokens than asked and no finish
reason (a ``[DONE]`` without ``finish_reason``, a closed connection); it would look *fast*.
``error``: a failed request of traffic whose ``error_type`` fits none of the others (added later).
``overloaded``: the provider says it is out of capacity (Anthropic's HTTP 529 ``overloaded_error``),
a service-health signal, where ``rate_limited`` (HTTP 429) is the caller's own quota (added later).
"""

PROBE_STATUSES: tuple[ProbeStatus, ...] = get_args(ProbeStatus)

SystemScope = Literal["prober", "target"]
"""Whose host the system metrics describe: always the prober's; ``target`` when the target runs
on that same host (a loopback URL or the prober's own host name or address), so they are the
target's too."""


class SystemMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """Host metrics of the prober's host at one moment; GPU fields are null without a GPU."""

    cpu_percent: Percent | None = None
    memory_percent: Percent | None = None
    gpu_percent: Percent | None = None
    gpu_memory_percent: Percent | None = None
    scope: SystemScope = "prober"


class TelemetryEvent(Event, frozen=True, kw_only=True, tag="telemetry.v1"):
    """One probe: what was asked, of whom, how it went and how long each phase took.

    Timings are wall-clock milliseconds measured by the prober, except the ``*_duration_ms``
    fields, which are the server's own figures where the API reports them (Ollama does).
    """

    provider: Annotated[ProviderKind, Meta(description="API flavour spoken by the endpoint")]
    model: Annotated[NonEmptyStr, Meta(description="model name as the endpoint knows it, e.g. llama3.1:8b")]
    target: Annotated[NonEmptyStr, Meta(description="name of the probe target in the prober config")]
    host: Annotated[str, Meta(max_length=256, description="host label of the endpoint, for cascades")] = ""
    prober: Annotated[str, Meta(max_length=256, description="id of the prober instance")] = ""
    prompt_id: Annotated[
        NonEmptyStr, Meta(description="id of the prompt; charts never mix prompts (rational subgroups)")
    ]
    prompt_class: Annotated[str, Meta(max_length=64, description="simple, medium or complex")] = ""
    prompt_hash: Annotated[str, Meta(max_length=128, description="sha256 hex of the prompt text")]
    prompt_text: Annotated[str, Meta(description="the prompt, only when the prober is told to")] | None = None
    streaming: bool = False
    max_tokens: Count | None = None
    status: ProbeStatus = "ok"
    error: Annotated[str, Meta(max_length=2000, description="what went wrong, when it did")] | None = None
    http_status: Annotated[int, Meta(ge=100, le=599, description="HTTP status, when one came")] | None = None
    latency_ms: Annotated[Milliseconds, Meta(description="request sent to last byte received")] | None = None
    ttft_ms: (
        Annotated[Milliseconds, Meta(description="request sent to first content token (streaming only)")]
        | None
    ) = None
    total_duration_ms: Milliseconds | None = None
    load_duration_ms: Milliseconds | None = None
    prompt_eval_duration_ms: Milliseconds | None = None
    eval_duration_ms: Milliseconds | None = None
    prompt_eval_count: Annotated[Count, Meta(description="prompt (input) tokens")] | None = None
    eval_count: Annotated[Count, Meta(description="generated (output) tokens")] | None = None
    tokens_per_s: (
        Annotated[
            float,
            Meta(
                ge=0,
                le=1e9,
                description="output tokens / generation seconds; null when too few tokens or the "
                "generation time was too short to measure (a stream that arrived in one burst)",
            ),
        ]
        | None
    ) = None
    cpu_percent: Percent | None = None
    memory_percent: Percent | None = None
    gpu_percent: Annotated[Percent, Meta(description="null when the host has no GPU")] | None = None
    gpu_memory_percent: Annotated[Percent, Meta(description="null when the host has no GPU")] | None = None
    system_scope: Annotated[
        SystemScope,
        Meta(description="the host metrics are the prober's host; 'target' when the target runs on it too"),
    ] = "prober"
    cold_start: Annotated[
        bool,
        Meta(
            description="the probe loaded the model (load duration over the target's threshold) and the "
            "target's cold_start policy keeps such probes out of warm latency charts"
        ),
    ] = False
    # Added for traffic (the OTLP receiver); probes leave them at their defaults.
    source: Annotated[Source, Meta(description="probe, or a request of real traffic")] = "probe"
    service_name: Annotated[
        str, Meta(max_length=256, description="traffic: the sending application (service.name)")
    ] = ""
    provider_name: Annotated[
        str, Meta(max_length=256, description="traffic: the provider as the span named it, e.g. gcp.gemini")
    ] = ""
    response_model: Annotated[
        str, Meta(max_length=256, description="traffic: the model that answered (gen_ai.response.model)")
    ] = ""
    error_type: (
        Annotated[str, Meta(max_length=256, description="traffic: the span's error.type, when it failed")]
        | None
    ) = None
    trace_id: Annotated[
        str, Meta(max_length=32, pattern="^([0-9a-f]{32})?$", description="traffic: the span's trace id")
    ] = ""

    def __post_init__(self) -> None:
        # What Postgres, the subjects and the KV keys cannot hold is refused here, when the event
        # is decoded (the API answers 422, a consumer dead-letters it), never further downstream.
        # Run for every event a consumer decodes (the persister's drain: a third of the decode),
        # so the usual case costs one test per check: the names read in one C call, no keyword
        # dicts, the texts looked at only when there are any, the tokens only when long.
        ts = self.ts
        if not EARLIEST <= ts < LATEST:
            check_ts("ts", ts)
        names: tuple[str, ...] = _names(self)
        check_name_values(_NAME_FIELDS, names)
        if self.error is not None or self.prompt_text is not None or self.error_type is not None:
            check_text(error=self.error, prompt_text=self.prompt_text, error_type=self.error_type)
        # Model, target and prompt become tokens of subjects and keys (a chart's KV key has all three).
        model, target, prompt_id = names[0], names[1], names[2]
        if len(model) > _SHORT_TOKEN or len(target) > _SHORT_TOKEN or len(prompt_id) > _SHORT_TOKEN:
            subjects.check_token("model", model)
            subjects.check_token("target", target)
            subjects.check_token("prompt_id", prompt_id)
        if (self.source == "traffic") != is_traffic_prompt(prompt_id):
            raise ValueError(
                f"`prompt_id` {prompt_id!r} with source {self.source!r}: real traffic, and only"
                f" traffic (source 'traffic'), has a prompt_id starting with {TRAFFIC_PROMPT_PREFIX!r}"
            )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def system(self) -> SystemMetrics:
        return SystemMetrics(
            cpu_percent=self.cpu_percent,
            memory_percent=self.memory_percent,
            gpu_percent=self.gpu_percent,
            gpu_memory_percent=self.gpu_memory_percent,
            scope=self.system_scope,
        )


_NAME_FIELDS: tuple[str, ...] = (
    "model",
    "target",
    "prompt_id",
    "host",
    "prober",
    "prompt_class",
    "prompt_hash",
    "service_name",
    "provider_name",
    "response_model",
)
"""The names :meth:`TelemetryEvent.__post_init__` refuses control characters in (model, target and
prompt first: it takes them as subject tokens from there)."""
_names = operator.attrgetter(*_NAME_FIELDS)
_SHORT_TOKEN = subjects.MAX_TOKEN_LENGTH // 12
"""A name this long or shorter fits a subject token however it encodes (``subjects.check_token``)."""


NUMERIC_METRICS: tuple[str, ...] = (
    "latency_ms",
    "ttft_ms",
    "total_duration_ms",
    "load_duration_ms",
    "prompt_eval_duration_ms",
    "eval_duration_ms",
    "prompt_eval_count",
    "eval_count",
    "tokens_per_s",
    "cpu_percent",
    "memory_percent",
    "gpu_percent",
    "gpu_memory_percent",
)
"""Telemetry fields a chart or a context table may show."""
