"""``traffic_minute.v1``: one minute of real traffic of one (provider, model, service, operation).

Requests of real traffic differ in prompt and output length, so they are not like with like and
are never charted one by one. The SPC engine (the owner of the model's telemetry partition)
aggregates them into rational subgroups: one event per minute per provider / model / service /
operation, closed once the stream is ``grace_s`` past the minute's end (a "minute" is
``LLMSCOPE_SPC_TRAFFIC_WINDOW_S``, 60 s by default). The SPC engine charts these events (error
rate against ``n``; latency per output token and TTFT quantiles with limits that depend on ``n``);
other teams may subscribe to them as they are.

Quantiles are empty (null) when no request of the minute had the value (e.g. no streamed request
for TTFT). ``late`` counts requests that arrived after an earlier minute of the same subgroup had
closed: they are in no minute, and are reported in the next one that closes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from llmscope.proto import subjects
from llmscope.proto.base import Count, Event, NonEmptyStr, check_names, check_ts
from llmscope.proto.telemetry import ProviderKind


class Quantiles(msgspec.Struct, frozen=True, kw_only=True):
    """Quantiles of one value over a minute's requests (those that had it: ``n``)."""

    n: Count
    p25: float
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float


class TrafficMinuteEvent(Event, frozen=True, kw_only=True, tag="traffic_minute.v1"):
    """One minute of traffic of a subgroup: counts, and quantiles of the requests' timings.

    ``ts`` is the minute's start (UTC, whole minute); the event id is derived from the subgroup
    and the minute, so a replay publishes the same id and JetStream drops the repeat.
    """

    provider: ProviderKind
    model: NonEmptyStr
    service_name: Annotated[
        NonEmptyStr, Meta(description="the sending application (service.name; unknown_service if none)")
    ]
    operation: Annotated[NonEmptyStr, Meta(description="gen_ai.operation.name: chat, embeddings, ...")]
    window_end: Annotated[datetime, Meta(tz=True, description="end of the minute: ts + window_s")]
    window_s: Annotated[
        int,
        Meta(ge=1, le=3600, description="length of the subgroup, 60 s unless the engine was told otherwise"),
    ] = 60
    n: Annotated[Count, Meta(description="requests that started in the minute")]
    errors: Annotated[Count, Meta(description="failed requests among them")]
    late: Annotated[Count, Meta(description="requests that came after their minute had closed")] = 0
    min_requests: Annotated[
        Count, Meta(description="the engine's minimum n for a charted minute, at the time")
    ] = 0
    latency_per_token_ms: (
        Annotated[
            Quantiles, Meta(description="successful requests with output tokens: latency / output tokens")
        ]
        | None
    ) = None
    ttft_ms: (
        Annotated[Quantiles, Meta(description="successful streamed requests: time to first chunk")] | None
    ) = None
    latency_ms: Annotated[Quantiles, Meta(description="successful requests: whole latency")] | None = None
    output_tokens_mean: Annotated[float, Meta(ge=0)] | None = None
    input_tokens_mean: Annotated[float, Meta(ge=0)] | None = None
    sampled: Annotated[
        bool,
        Meta(description="quantiles are over the first values of a minute busier than the engine keeps"),
    ] = False

    def __post_init__(self) -> None:
        check_ts("ts", self.ts)
        check_names(model=self.model, service_name=self.service_name, operation=self.operation)
        subjects.check_token("model", self.model)
        if self.errors > self.n:
            raise ValueError("`errors` must not exceed `n`")
