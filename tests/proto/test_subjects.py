from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmscope.proto import subjects


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("llama3.1:8b", "llama3~2E1~3A8b"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("org/model", "org~2Fmodel"),
        ("a b*c>d~e", "a~20b~2Ac~3Ed~7Ee"),
    ],
)
def test_known_model_names_map_to_safe_tokens(name: str, token: str) -> None:
    assert subjects.encode_token(name) == token
    assert subjects.decode_token(token) == name


@given(st.text(min_size=1, max_size=80))
def test_any_name_round_trips_and_never_leaks_subject_syntax(name: str) -> None:
    token = subjects.encode_token(name)
    assert subjects.decode_token(token) == name
    assert not any(ch in token for ch in ".*> \t\r\n")
    assert token


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError):
        subjects.encode_token("")


def test_malformed_tokens_are_refused() -> None:
    for bad in ("a~2", "a~zz", "a.b"):
        with pytest.raises(ValueError):
            subjects.decode_token(bad)


def test_subjects_parse_back() -> None:
    subject = subjects.telemetry("ollama", "llama3.1:8b")
    assert subject == "llmscope.telemetry.v1.ollama.llama3~2E1~3A8b"
    assert subjects.parse_telemetry(subject) == ("ollama", "llama3.1:8b")
    vsubject = subjects.violations("openai", "org/m", "R1")
    assert subjects.parse_violation(vsubject) == ("openai", "org/m", "R1")
    with pytest.raises(ValueError):
        subjects.parse_telemetry(vsubject)


def test_stored_telemetry_subjects_carry_a_partition_and_parse_back() -> None:
    subject = subjects.telemetry("ollama", "llama3.1:8b")
    assert subjects.parse_telemetry(f"{subject}.7") == ("ollama", "llama3.1:8b")
    with pytest.raises(ValueError):
        subjects.parse_telemetry(f"{subject}.seven")
    assert subjects.telemetry_partition_filter(3) == "llmscope.telemetry.v1.*.*.3"
    assert subjects.telemetry_stored(16).endswith(".{{partition(16,1,2)}}")
