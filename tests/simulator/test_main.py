"""``llmscope sim`` end to end: serve in a child process, steer it with ``inject``, stop with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from llmscope.config.env import Env
from llmscope.simulator.__main__ import main
from llmscope.stack.ports import free_port


@pytest.fixture
def sim_process() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmscope.simulator",
            "serve",
            "--port",
            str(port),
            "--seed",
            "1",
            "--time-scale",
            "0.01",
        ],
        env={**os.environ, "LLMSCOPE_LOG_LEVEL": "WARNING"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as resp:
                assert resp.read() == b"Ollama is running"
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # never left running, whatever the outcome
            proc.wait()
            raise
    assert code == 0


def test_inject_commands_drive_a_running_simulator(
    sim_process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sim_process
    assert (
        main(["inject", "shift", "--model", "llama3.1:8b", "--factor", "2", "--duration", "60", "--url", url])
        == 0
    )
    shift = json.loads(capsys.readouterr().out)["anomaly"]
    assert (shift["kind"], shift["model"], shift["factor"]) == ("shift", "llama3.1:8b", 2.0)
    assert main(["inject", "cascade", "--host", "sim-gpu-1", "--url", url]) == 0
    assert main(["inject", "outage", "--model", "gpt-4o-mini", "--status", "529", "--url", url]) == 0
    assert main(["inject", "drift", "--model", "qwen2.5:7b", "--ramp", "10", "--url", url]) == 0
    assert main(["inject", "spike", "--count", "3", "--url", url]) == 0
    capsys.readouterr()
    # LLMSCOPE_SIM_URL is the default --url.
    assert main(["state"], env=Env({"LLMSCOPE_SIM_URL": url})) == 0
    state = json.loads(capsys.readouterr().out)
    assert [a["kind"] for a in state["anomalies"]] == ["shift", "cascade", "outage", "drift", "spike"]
    assert main(["inject", "cascade", "--host", "no-such-host", "--url", url]) == 1
    assert "unknown host" in capsys.readouterr().err
    assert main(["inject", "clear", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"cleared": 5}


def test_inject_finds_the_simulator_on_llmscope_sim_port(
    sim_process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shell that ran ``make up`` with LLMSCOPE_SIM_PORT steers that simulator, not 11500's."""
    port = sim_process.rsplit(":", 1)[1]
    env = Env({"LLMSCOPE_SIM_PORT": port})
    assert main(["inject", "shift", "--model", "llama3.1:8b", "--factor", "2"], env=env) == 0
    assert json.loads(capsys.readouterr().out)["anomaly"]["kind"] == "shift"
    assert main(["inject", "clear"], env=env) == 0
    assert json.loads(capsys.readouterr().out) == {"cleared": 1}
    # LLMSCOPE_SIM_URL still wins: an unreachable one is an error, whatever the port says.
    elsewhere = Env({"LLMSCOPE_SIM_PORT": port, "LLMSCOPE_SIM_URL": f"http://127.0.0.1:{free_port()}"})
    assert main(["state"], env=elsewhere) == 1
    assert "cannot reach the simulator" in capsys.readouterr().err


def test_unreachable_simulator_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["inject", "shift", "--model", "m", "--url", url]) == 1
    assert "cannot reach the simulator" in capsys.readouterr().err


def test_bad_setting_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"], env=Env({"LLMSCOPE_SIM_TIME_SCALE": "fast"})) == 2
    assert "LLMSCOPE_SIM_TIME_SCALE" in capsys.readouterr().err
