from __future__ import annotations

from pathlib import Path

import pytest

from llmscope.config.env import ConfigError, Env
from llmscope.stack import cli
from llmscope.stack.up import Stack, UpSettings, load_or_create_api_key


def test_help_lists_every_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("up", *cli.SERVICES, "spc analyze"):
        assert name in out


def test_unknown_commands_fail_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["spc"]) == 2
    assert cli.main([]) == 2


def test_up_settings_defaults_and_validation(tmp_path: Path) -> None:
    settings = UpSettings.from_env(Env({"LLMSCOPE_DATA_DIR": str(tmp_path)}))
    assert settings.port == 8000
    assert settings.nats_url is None
    assert settings.database_url is None
    assert "sim" in settings.services
    no_sim = UpSettings.from_env(Env({"LLMSCOPE_SIMULATOR": "false"}))
    assert "sim" not in no_sim.services
    with pytest.raises(ConfigError, match="LLMSCOPE_PORT"):
        UpSettings.from_env(Env({"LLMSCOPE_PORT": "99999"}))
    with pytest.raises(ConfigError, match="LLMSCOPE_UP_SERVICES"):
        UpSettings.from_env(Env({"LLMSCOPE_UP_SERVICES": "api,frontend"}))
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        UpSettings.from_env(Env({"DATABASE_URL": "mysql://x/y"}))


def test_up_gives_every_service_a_metrics_port_next_to_the_api(tmp_path: Path) -> None:
    settings = UpSettings.from_env(Env({"LLMSCOPE_DATA_DIR": str(tmp_path)}))
    assert settings.metrics_ports == {"prober": 8001, "spc-engine": 8002, "alerter": 8003}
    env = Stack(settings).child_env("nats://n", "postgresql://d", "key")
    assert env["LLMSCOPE_SPC_HEALTH_PORT"] == "8002"
    assert env["LLMSCOPE_SPC_HEALTH_HOST"] == "127.0.0.1"
    moved = UpSettings.from_env(
        Env(
            {
                "LLMSCOPE_PORT": "9000",
                "LLMSCOPE_SPC_HEALTH_PORT": "0",
                "LLMSCOPE_UP_SERVICES": "api,spc-engine,prober",
            }
        )
    )
    assert moved.metrics_ports == {"prober": 9001}
    env = Stack(moved).child_env("nats://n", "postgresql://d", "key")
    assert env["LLMSCOPE_PROBER_HEALTH_PORT"] == "9001"
    assert env["LLMSCOPE_SPC_HEALTH_PORT"] == "0"
    assert env["LLMSCOPE_ALERTER_HEALTH_PORT"] == "0"


def test_api_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    key = load_or_create_api_key(tmp_path)
    assert len(key) >= 40
    assert load_or_create_api_key(tmp_path) == key
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0
