"""Target configuration: TOML, YAML, LLMSCOPE_TARGETS and the simulator default; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmscope.config.env import ConfigError, Env
from llmscope.prober.prompts import DEFAULT_PROMPTS
from llmscope.prober.settings import ProberSettings

TOML = """
[defaults]
interval_s = 5
timeout_s = 10

[[prompts]]
id = "haiku"
class = "simple"
text = "Write a haiku about latency."
max_tokens = 40

[[prompts]]
id = "essay"
class = "complex"
text = "Write an essay."
max_tokens = 400

[[targets]]
kind = "openai"
model = "gpt-4o-mini"
api_key_env = "MY_OPENAI_KEY"
host = "openai"
prompts = ["haiku"]

[[targets]]
kind = "ollama"
name = "local"
base_url = "http://gpu-box:11434/"
model = "llama3.1:8b"
streaming = false
interval_s = 1.5
api = "chat"
"""

YAML = """
defaults:
  jitter: 0.2
targets:
  - kind: anthropic
    model: claude-3-5-haiku
    api_key_env: MY_ANTHROPIC_KEY
  - kind: ollama
    model: qwen2.5:7b
    host: gpu-1
"""


def _settings(tmp_path: Path, name: str, text: str, env: dict[str, str] | None = None) -> ProberSettings:
    path = tmp_path / name
    path.write_text(text)
    return ProberSettings.from_env(Env({"LLMSCOPE_PROBER_CONFIG": str(path), **(env or {})}))


def test_toml_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "targets.toml", TOML, {"MY_OPENAI_KEY": "sk-abc"})
    openai, local = settings.targets
    assert settings.source == "file"
    assert (openai.name, openai.kind, openai.base_url, openai.host) == (
        "openai/gpt-4o-mini",
        "openai",
        "https://api.openai.com/v1",
        "openai",
    )
    assert openai.api_key.get() == "sk-abc"
    assert "sk-abc" not in repr(openai)
    assert [p.id for p in openai.prompts] == ["haiku"]
    assert openai.prompts[0].prompt_class == "simple"
    assert (openai.interval_s, openai.timeout_s, openai.jitter, openai.streaming) == (5.0, 10.0, 0.1, True)
    assert (local.name, local.base_url, local.streaming, local.interval_s, local.api) == (
        "local",
        "http://gpu-box:11434",
        False,
        1.5,
        "chat",
    )
    assert [p.id for p in local.prompts] == ["haiku", "essay"]


def test_yaml_file_with_default_prompts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "targets.yaml", YAML, {"MY_ANTHROPIC_KEY": "k"})
    anthropic, ollama = settings.targets
    assert anthropic.base_url == "https://api.anthropic.com"
    assert anthropic.jitter == 0.2
    assert ollama.prompts == DEFAULT_PROMPTS
    assert {p.prompt_class for p in DEFAULT_PROMPTS} == {"simple", "medium", "complex"}
    assert all(len(p.hash) == 64 for p in DEFAULT_PROMPTS)


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("t.toml", '[[targets]]\nkind = "ollama"\nmodle = "x"\n', ["LLMSCOPE_PROBER_CONFIG", "modle"]),
        ("t.toml", '[[targets]]\nkind = "bard"\nmodel = "x"\n', ["$.targets[0].kind"]),
        ("t.yaml", "targets:\n  - kind: ollama\n    model: 3\n", ["$.targets[0].model", "str"]),
        ("t.yaml", "targets:\n  - kind: ollama\n    model: m\n    interval_s: -1\n", ["interval_s"]),
        ("t.toml", "[[targets]\n", ["not valid TOML"]),
        ("t.yaml", "targets: [\n", ["not valid YAML"]),
        ("t.json", "{}", [".toml, .yaml or .yml"]),
        (
            "t.toml",
            '[[targets]]\nkind = "openai"\nmodel = "m"\napi_key_env = "NOPE_KEY"\n',
            ["targets[0]", "NOPE_KEY"],
        ),
        (
            "t.toml",
            '[[targets]]\nkind = "openai"\nmodel = "m"\nbase_url = "ftp://x"\n',
            ["targets[0]", "base_url"],
        ),
        ("t.toml", '[[targets]]\nkind = "ollama"\nmodel = "m"\nprompts = ["zzz"]\n', ["targets[0]", "zzz"]),
        ("t.toml", '[[targets]]\nkind = "openai"\nmodel = "m"\napi = "chat"\n', ["ollama only"]),
        (
            "t.toml",
            '[[targets]]\nkind = "ollama"\nmodel = "m"\n[[targets]]\nkind = "ollama"\nmodel = "m"\n',
            ["unique"],
        ),
        ("t.toml", "[defaults]\ninterval_s = 1\n", ["no targets"]),
        (
            "t.toml",
            '[[targets]]\nkind = "ollama"\nmodel = "m"\nconcurrency = 0\n',
            ["LLMSCOPE_PROBER_CONFIG", "$.targets[0].concurrency", ">= 1"],
        ),
        (
            "t.yaml",
            "targets:\n  - kind: ollama\n    model: m\n    concurrency: 1.5\n",
            ["$.targets[0].concurrency"],
        ),
        (
            "t.toml",
            '[defaults]\nconcurrency = 100\n[[targets]]\nkind = "ollama"\nmodel = "m"\n',
            ["$.defaults.concurrency"],
        ),
        (
            "t.toml",
            '[[targets]]\nkind = "ollama"\nmodel = "m"\ncold_start = "sometimes"\n',
            ["$.targets[0].cold_start", "sometimes"],
        ),
        (
            "t.toml",
            '[[targets]]\nkind = "ollama"\nmodel = "m"\ncold_start_ms = -5\n',
            ["$.targets[0].cold_start_ms"],
        ),
    ],
)
def test_bad_files_name_the_variable_and_field(
    tmp_path: Path, name: str, text: str, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(tmp_path, name, text)
    for needle in needles:
        assert needle in str(info.value)


def test_concurrency_and_cold_start_settings(tmp_path: Path) -> None:
    text = (
        "[defaults]\nconcurrency = 2\ncold_start_ms = 800\n"
        '[[targets]]\nkind = "ollama"\nmodel = "a"\n'
        '[[targets]]\nkind = "ollama"\nmodel = "b"\nconcurrency = 1\ncold_start = "include"\n'
    )
    a, b = _settings(tmp_path, "t.toml", text).targets
    assert (a.concurrency, a.cold_start, a.cold_start_ms) == (2, "exclude", 800.0)
    assert (b.concurrency, b.cold_start, b.cold_start_ms) == (1, "include", 800.0)
    spec = "ollama,http://x,m,concurrency=3,cold_start=include,cold_start_ms=2000;openai,http://y/v1,n"
    c, d = ProberSettings.from_env(Env({"LLMSCOPE_TARGETS": spec})).targets
    assert (c.concurrency, c.cold_start, c.cold_start_ms) == (3, "include", 2000.0)
    # Defaults: one probe of a target at a time; loads over 500 ms are cold starts kept apart.
    assert (d.concurrency, d.cold_start, d.cold_start_ms) == (1, "exclude", 500.0)
    assert all(t.concurrency == 1 for t in ProberSettings.from_env(Env({})).targets)


def test_missing_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"LLMSCOPE_PROBER_CONFIG=.*cannot read"):
        ProberSettings.from_env(Env({"LLMSCOPE_PROBER_CONFIG": str(tmp_path / "absent.toml")}))


def test_compact_env_spec() -> None:
    settings = ProberSettings.from_env(
        Env(
            {
                "LLMSCOPE_TARGETS": "ollama,http://127.0.0.1:11434,llama3.1:8b ; "
                "openai,https://api.example.com/v1,gpt-4o-mini,api_key_env=K,streaming=false,name=ex,interval_s=7",
                "K": "secret",
                "LLMSCOPE_PROBER_INTERVAL_S": "3",
            }
        )
    )
    first, second = settings.targets
    assert (first.kind, first.model, first.interval_s, first.streaming) == (
        "ollama",
        "llama3.1:8b",
        3.0,
        True,
    )
    assert (second.name, second.streaming, second.interval_s, second.api_key.get()) == (
        "ex",
        False,
        7.0,
        "secret",
    )
    assert settings.source == "env"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("ollama,http://x", "KIND,BASE_URL,MODEL"),
        ("bard,http://x,m", "entry 1"),
        ("ollama,http://x,m,streaming=maybe", "streaming"),
        ("ollama,http://x,m,interval_s=soon", "interval_s"),
        ("ollama,http://x,m,colour=red", "colour"),
        ("ollama,http://x,m;openai,nope,m", "entry 2"),
        ("ollama,http://x,m,concurrency=two", "concurrency='two' is not a whole number"),
        ("ollama,http://x,m,concurrency=0", "$.concurrency"),
        ("ollama,http://x,m,cold_start=never", "$.cold_start"),
        ("ollama,http://x,m,cold_start_ms=soon", "cold_start_ms"),
    ],
)
def test_bad_env_spec_names_the_variable_and_entry(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProberSettings.from_env(Env({"LLMSCOPE_TARGETS": spec}))
    assert "LLMSCOPE_TARGETS" in str(info.value)
    assert needle in str(info.value)


def test_file_and_env_combine(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, "t.yaml", YAML, {"MY_ANTHROPIC_KEY": "k", "LLMSCOPE_TARGETS": "ollama,http://h:1,m"}
    )
    assert settings.source == "file+env"
    assert len(settings.targets) == 3


def test_nothing_configured_probes_the_simulator() -> None:
    settings = ProberSettings.from_env(Env({"LLMSCOPE_SIM_URL": "http://sim:9999/"}))
    assert settings.source == "simulator"
    by_kind = {t.kind: t for t in settings.targets}
    assert by_kind["openai"].base_url == "http://sim:9999/v1"
    assert by_kind["anthropic"].base_url == "http://sim:9999"
    assert {t.model for t in settings.targets} == {
        "llama3.1:8b",
        "qwen2.5:7b",
        "gpt-4o-mini",
        "claude-3-5-haiku",
    }
    assert {t.host for t in settings.targets if t.kind == "ollama"} == {"sim-gpu-1"}
    default = ProberSettings.from_env(Env({}))
    assert default.targets[0].base_url == "http://127.0.0.1:11500"
    assert (default.health_port, default.concurrency, default.include_prompt_text) == (8001, 4, False)
    assert default.targets[0].interval_s == 2.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LLMSCOPE_PROBER_INTERVAL_S", "soon"),
        ("LLMSCOPE_PROBER_CONCURRENCY", "0"),
        ("LLMSCOPE_PROBER_INCLUDE_PROMPT_TEXT", "perhaps"),
        ("LLMSCOPE_PROBER_HEALTH_PORT", "70000"),
        ("LLMSCOPE_SIM_URL", "sim:11500"),
        ("NATS_URL", "http://nats"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ProberSettings.from_env(Env({variable: value}))
