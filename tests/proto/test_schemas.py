"""The committed JSON Schemas match the Structs and validate real events."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pytest

from llmscope.proto import codec, schemagen
from llmscope.proto.telemetry import TelemetryEvent
from tests.proto.test_codec import telemetry


def test_committed_schemas_are_current() -> None:
    for event_type in codec.EVENT_TYPES:
        name, text = schemagen.render(event_type)
        path = schemagen.SCHEMA_DIR / name
        assert path.read_text() == text, f"{path} is stale: run `make schemas`"


def test_schema_accepts_encoded_events_and_rejects_bad_ones() -> None:
    _, text = schemagen.render(TelemetryEvent)
    schema = json.loads(text)
    good = msgspec.json.decode(codec.encode(telemetry()))
    jsonschema.validate(good, schema)
    bad = {**good, "latency_ms": -5}
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(bad, schema)
    assert "latency_ms" in list(caught.value.absolute_path) or "-5" in caught.value.message
