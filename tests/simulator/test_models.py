from __future__ import annotations

import pytest

from llmscope.config.env import ConfigError, Env
from llmscope.simulator.models import DEFAULT_MODELS, parse_model_spec
from llmscope.simulator.settings import SimSettings


def test_spec_with_options() -> None:
    model = parse_model_spec("llama3.1:8b@gpu-1;tokens_per_s=40;load_s=2;flavour=openai")
    assert (model.name, model.host, model.tokens_per_s, model.load_s, model.flavour) == (
        "llama3.1:8b",
        "gpu-1",
        40.0,
        2.0,
        "openai",
    )


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no-host", "NAME@HOST"),
        ("m@h;speed=3", "unknown option 'speed'"),
        ("m@h;tokens_per_s=0", "out of range"),
        ("m@h;flavour=bard", "flavour"),
        ("m@h;load_s", "key=value"),
    ],
)
def test_bad_specs_say_why(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_model_spec(spec)


def test_settings_defaults_and_errors_name_the_variable() -> None:
    settings = SimSettings.from_env(Env({}))
    assert (settings.host, settings.port, settings.seed, settings.models) == (
        "127.0.0.1",
        11500,
        None,
        DEFAULT_MODELS,
    )
    assert {m.host for m in DEFAULT_MODELS if m.flavour == "ollama"} == {"sim-gpu-1"}
    custom = SimSettings.from_env(
        Env({"LLMSCOPE_SIM_MODELS": "a@h1 b@h1;tokens_per_s=9", "LLMSCOPE_SIM_SEED": "3"})
    )
    assert [m.name for m in custom.models] == ["a", "b"]
    assert custom.seed == 3
    with pytest.raises(ConfigError, match="LLMSCOPE_SIM_MODELS"):
        SimSettings.from_env(Env({"LLMSCOPE_SIM_MODELS": "a@h a@h"}))
    with pytest.raises(ConfigError, match="LLMSCOPE_SIM_PORT"):
        SimSettings.from_env(Env({"LLMSCOPE_SIM_PORT": "http"}))
