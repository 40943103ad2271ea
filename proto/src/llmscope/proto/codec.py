"""JSON encoding of wire events. Encoders and decoders are built once per process and shared."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from llmscope.proto.alert import NotificationEvent
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.incident import IncidentEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.traffic_histogram import TrafficHistogramEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent

AnyEvent = (
    TelemetryEvent
    | ViolationEvent
    | DeadLetterEvent
    | IncidentEvent
    | NotificationEvent
    | TrafficMinuteEvent
    | TrafficHistogramEvent
    | ViolationActionEvent
)
EVENT_TYPES: tuple[type[msgspec.Struct], ...] = (
    TelemetryEvent,
    ViolationEvent,
    DeadLetterEvent,
    IncidentEvent,
    NotificationEvent,
    TrafficMinuteEvent,
    TrafficHistogramEvent,
    ViolationActionEvent,
)

E = TypeVar("E", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()
_any_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_decoders: dict[type[msgspec.Struct], msgspec.json.Decoder[msgspec.Struct]] = {
    t: msgspec.json.Decoder(t) for t in EVENT_TYPES
}


class DecodeError(ValueError):
    """Bytes that are not a valid event; the message names the field at fault."""


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Decode any known event, dispatching on its ``type`` tag."""
    try:
        return _any_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(str(exc)) from exc


def decode_as(data: bytes, event_type: type[E]) -> E:
    """Decode bytes that must be one event type."""
    decoder = _decoders.get(event_type)
    if decoder is None:
        decoder = _decoders[event_type] = msgspec.json.Decoder(event_type)
    try:
        event = decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(str(exc)) from exc
    assert isinstance(event, event_type)
    return event


def decoder(event_type: type[E]) -> Callable[[bytes], E]:
    """:func:`decode_as` for one event type, made once: a consumer decodes every message with it,
    in one call (no lambda around ``decode_as``, no lookup of the decoder, no type check after)."""
    decode = msgspec.json.Decoder(event_type).decode

    def decode_one(data: bytes) -> E:
        try:
            return decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecodeError(str(exc)) from exc

    return decode_one


def to_builtins(event: msgspec.Struct) -> object:
    """The JSON-ready form of an event (for HTTP responses and templates)."""
    return msgspec.to_builtins(event)
