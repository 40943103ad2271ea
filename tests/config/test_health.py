"""The services' health server: a port that cannot be listened on stops the service with a
message naming the variable that set it (one helper, used by the prober, the standalone
persister, the SPC engine and the alerter)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from llmscope.config.env import ConfigError
from llmscope.config.health import start_health_server


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on for the test's length."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_taken_port_is_a_configuration_error_naming_its_variables(taken_port: int) -> None:
    with pytest.raises(ConfigError) as raised:
        await start_health_server(
            "127.0.0.1",
            taken_port,
            ready=lambda: True,
            registry=CollectorRegistry(),
            host_variable="LLMSCOPE_X_HEALTH_HOST",
            port_variable="LLMSCOPE_X_HEALTH_PORT",
        )
    message = str(raised.value)
    assert message.startswith(f"LLMSCOPE_X_HEALTH_PORT={taken_port}: cannot listen")
    assert "LLMSCOPE_X_HEALTH_HOST=127.0.0.1" in message
    assert "0 to disable" in message


async def test_port_0_starts_no_server() -> None:
    server = await start_health_server(
        "127.0.0.1",
        0,
        ready=lambda: True,
        registry=CollectorRegistry(),
        host_variable="H",
        port_variable="P",
    )
    assert server is None


@pytest.mark.parametrize(
    ("module", "variable", "env"),
    [
        (
            "llmscope.prober",
            "LLMSCOPE_PROBER_HEALTH_PORT",
            {"LLMSCOPE_TARGETS": "ollama,http://127.0.0.1:9,m"},
        ),
        # Its health server starts before it connects to NATS.
        ("llmscope.spc_engine", "LLMSCOPE_SPC_HEALTH_PORT", {}),
        # Its health server starts before it opens Postgres: the URL is never dialled.
        (
            "llmscope.api.persister",
            "LLMSCOPE_PERSISTER_HEALTH_PORT",
            {"DATABASE_URL": "postgresql://u@127.0.0.1:9/d"},
        ),
    ],
)
def test_a_service_whose_health_port_is_taken_exits_2_naming_the_variable(
    taken_port: int, module: str, variable: str, env: dict[str, str]
) -> None:
    environ = {**os.environ, **env, variable: str(taken_port), "NATS_URL": "nats://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-m", module], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert f"{variable}={taken_port}: cannot listen" in done.stderr
    assert "Traceback" not in done.stderr
