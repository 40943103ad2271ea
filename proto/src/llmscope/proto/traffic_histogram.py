"""``traffic_histogram.v1``: one data point of a GenAI client metric sent over OTLP.

Applications that export metrics rather than spans (or both) describe their LLM calls with three
histograms (OpenTelemetry GenAI semantic conventions): ``gen_ai.client.operation.duration``
(seconds), ``gen_ai.client.operation.time_to_first_chunk`` (seconds) and
``gen_ai.client.token.usage`` (tokens, ``token_type`` input or output). The API's ``/v1/metrics``
receiver publishes each data point of them as it is: a window (``start``..``ts``), the attributes
that say which traffic it is, and the histogram (count, sum, bucket bounds and counts).

A histogram is no list of requests: latency per output token cannot be computed from it (the
tokens of each request are not paired with its duration). The SPC engine does not chart these
events yet; they are on the bus for consumers that want them. ``temporality`` says whether the
counts are of the window alone (``delta``) or since ``start`` (``cumulative``: subtract the
previous point of the same series).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from llmscope.proto import subjects
from llmscope.proto.base import Count, Event, NonEmptyStr, check_names, check_ts
from llmscope.proto.telemetry import ProviderKind

GenAiMetric = Literal[
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.token.usage",
]


class TrafficHistogramEvent(Event, frozen=True, kw_only=True, tag="traffic_histogram.v1"):
    """One histogram data point of a GenAI client metric; ``ts`` is the end of its window.

    The id is derived from the series (service, metric, attributes) and the window, so an
    exporter's retry is stored once.
    """

    metric: GenAiMetric
    unit: Annotated[str, Meta(description="as sent: s for durations, {token} for token usage")] = ""
    start: Annotated[datetime, Meta(tz=True, description="start of the window (start_time_unix_nano)")]
    temporality: Literal["delta", "cumulative"]
    provider: ProviderKind
    provider_name: str = ""
    model: NonEmptyStr
    response_model: str = ""
    service_name: Annotated[str, Meta(description="the sending application (service.name)")] = ""
    operation: Annotated[str, Meta(description="gen_ai.operation.name: chat, embeddings, ...")] = ""
    server_address: str = ""
    error_type: Annotated[str, Meta(description="error.type: the data point counts failed calls")] = ""
    token_type: Annotated[str, Meta(description="gen_ai.token.type of token usage: input or output")] = ""
    count: Count
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    explicit_bounds: Annotated[tuple[float, ...], Meta(description="upper bounds of the buckets")] = ()
    bucket_counts: Annotated[
        tuple[int, ...], Meta(description="len(explicit_bounds) + 1 counts (empty: none sent)")
    ] = ()

    def __post_init__(self) -> None:
        check_ts("ts", self.ts)
        check_ts("start", self.start)
        check_names(
            model=self.model,
            service_name=self.service_name,
            operation=self.operation,
            provider_name=self.provider_name,
            server_address=self.server_address,
            error_type=self.error_type,
        )
        subjects.check_token("model", self.model)
        if self.start > self.ts:
            raise ValueError("`start` must not be after `ts`")
        if self.bucket_counts and len(self.bucket_counts) != len(self.explicit_bounds) + 1:
            raise ValueError("`bucket_counts` must have one more entry than `explicit_bounds`")
        if any(c < 0 for c in self.bucket_counts):
            raise ValueError("`bucket_counts` must not be negative")
        if self.bucket_counts and sum(self.bucket_counts) != self.count:
            raise ValueError("`bucket_counts` must add up to `count`")
        if list(self.explicit_bounds) != sorted(set(self.explicit_bounds)):
            raise ValueError("`explicit_bounds` must be strictly increasing")
