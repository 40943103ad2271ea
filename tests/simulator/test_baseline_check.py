"""Where ``llmscope sim inject`` finds the key it asks the API's charts with."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmscope.config.env import Env
from llmscope.simulator.baseline_check import api_settings


def test_without_a_key_in_the_environment_the_data_directorys_api_key_is_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "api_key").write_text("key-from-up\n")  # as `llmscope up` writes it
    assert api_settings(Env({"LLMSCOPE_DATA_DIR": str(data)})) == ("http://127.0.0.1:8000", "key-from-up")
    # A key given in the environment comes first.
    for name in ("LLMSCOPE_SIM_API_KEY", "LLMSCOPE_READ_KEY", "LLMSCOPE_API_KEY"):
        env = Env({"LLMSCOPE_DATA_DIR": str(data), name: "given"})
        assert api_settings(env)[1] == "given", name
    # No `llmscope up` there (no file, an empty one): no key, and nothing created.
    assert api_settings(Env({"LLMSCOPE_DATA_DIR": str(tmp_path / "none")}))[1] is None
    assert not (tmp_path / "none").exists()
    (data / "api_key").write_text("\n")
    assert api_settings(Env({"LLMSCOPE_DATA_DIR": str(data)}))[1] is None


def test_the_default_data_directory_is_ups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".llmscope").mkdir()
    (tmp_path / ".llmscope" / "api_key").write_text("default-dir-key\n")
    monkeypatch.chdir(tmp_path)
    assert api_settings(Env({}))[1] == "default-dir-key"
