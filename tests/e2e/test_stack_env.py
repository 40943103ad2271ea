"""The whole-stack tests start `llmscope up` with only what the test sets: a variable exported in
the caller's shell (LLMSCOPE_SIM_URL once made two of them probe a dead URL) does not reach it."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.e2e.stack import llmscope_up, scrubbed_environ

LEAKS = {
    "LLMSCOPE_SIM_URL": "http://127.0.0.1:9/nothing-here",
    "LLMSCOPE_PROBER_INTERVAL_S": "not-a-number",
    "NATS_URL": "nats://127.0.0.1:9",
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
}


def test_scrubbed_environ_keeps_the_machine_and_drops_every_setting() -> None:
    env = scrubbed_environ({"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", **LEAKS, "LLMSCOPE_X": "1"})
    assert env == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C"}


@pytest.mark.e2e
def test_an_exported_llmscope_variable_does_not_reach_the_stack(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in LEAKS.items():
        monkeypatch.setenv(name, value)
    with llmscope_up(data_dir, {"LLMSCOPE_UP_SERVICES": "sim,api,prober"}) as stack:
        procs = [psutil.Process(stack.proc.pid), *psutil.Process(stack.proc.pid).children(recursive=True)]
        environs = []
        for proc in procs:
            try:
                environs.append(proc.environ())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        # `up`, its embedded servers and its services (at least the api, the prober, the simulator)
        assert len(environs) >= 4, stack.log()
        for environ in environs:
            leaked = {k: v for k, v in LEAKS.items() if environ.get(k) == v}
            assert not leaked, leaked
        # The stack started on its own settings: the API answers on the port the test chose.
        with stack.client() as client:
            assert client.get("/healthz").status_code == 200
