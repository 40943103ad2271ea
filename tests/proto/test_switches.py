from __future__ import annotations

import msgspec
import pytest

from llmscope.proto import subjects
from llmscope.proto.switches import ModelSwitch, ModelSwitches, model_key


def test_keys_are_reversible_and_valid_kv_keys() -> None:
    key = model_key("ollama", "org/llama3.1:8b")
    assert all(ch.isalnum() or ch in "-/_=." for ch in key)
    assert subjects.parse_kv_key(key, 2) == ("ollama", "org/llama3.1:8b")
    with pytest.raises(ValueError):
        subjects.parse_kv_key(key, 3)


def test_switches_follow_the_latest_value_and_deletes() -> None:
    switches = ModelSwitches()
    key = model_key("openai", "gpt-4o-mini")
    assert switches.enabled("openai", "gpt-4o-mini")
    off = msgspec.json.encode(ModelSwitch(provider="openai", model="gpt-4o-mini", enabled=False))
    switches.apply(key, off)
    assert not switches.enabled("openai", "gpt-4o-mini")
    assert switches.enabled("openai", "other")
    switches.apply(key, None)
    assert switches.enabled("openai", "gpt-4o-mini")
    with pytest.raises(msgspec.DecodeError):
        switches.apply(key, b"not json")
