"""Starting the API for real: the in-process runner (for whole-stack tests) and the CLI entry point."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from llmscope.api.__main__ import main
from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from tests.api.conftest import API_KEY


async def test_run_api_serves_on_a_real_socket(settings: ApiSettings) -> None:
    async with run_api(dataclasses.replace(settings, persister=False)) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert (await client.get("/readyz")).json()["ready"] is True
            r = await client.get("/api/violations", headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.json() == {"items": [], "next_cursor": None}
            assert (await client.get("/")).status_code == 303


def test_main_refuses_bad_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.delenv("LLMSCOPE_API_KEY", raising=False)
    assert main([]) == 2
    assert "LLMSCOPE_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LLMSCOPE_API_KEY", "k" * 20)
    monkeypatch.setenv("LLMSCOPE_PORT", "eighty")
    assert main([]) == 2
    assert "LLMSCOPE_PORT" in capsys.readouterr().err
