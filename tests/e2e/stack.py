"""Runs the real `llmscope up` as a subprocess, the way a user does, on free ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmscope.stack.ports import free_ports


@dataclass
class RunningStack:
    proc: subprocess.Popen[bytes]
    base_url: str
    sim_url: str
    data_dir: Path
    env: dict[str, str]
    api_key: str = ""
    output: list[str] = field(default_factory=list)
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Each service's /metrics."""

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10
        )

    def llmscope(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another `llmscope` command against this stack, as a user would from a second terminal."""
        return subprocess.run(
            [sys.executable, "-m", "llmscope.stack.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        return "".join(self.output[-400:])

    def mark(self) -> int:
        """Where `up`'s output stands now: :meth:`since` reads everything printed after it."""
        return len(self.output)

    def since(self, mark: int) -> str:
        """All of `up`'s output after ``mark``, however much (``log()`` keeps only the tail, which a
        burst of service lines pushes a supervisor line out of)."""
        return "".join(self.output[mark:])

    def client_env(self) -> dict[str, str]:
        """What `up` wrote to DATA_DIR/client.env: the URLs, with their generated passwords."""
        lines = (self.data_dir / "client.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _pump(proc: subprocess.Popen[bytes], sink: list[str]) -> None:
    """Read every line `up` and its services print. Bytes decoded line by line: the services
    share the pipe, a long line is written in more than one piece, and a character cut between
    two processes' pieces must not end the reading (the pipe would fill and stop the stack)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line.decode(errors="replace"))


# What a process needs from the machine to run at all; everything else, LLMSCOPE_*, NATS_URL and
# DATABASE_URL above all, comes from the test, so an exported variable cannot steer the stack.
_MACHINE = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP"}
    | {"VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "SYSTEMROOT"}
)


def scrubbed_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment reduced to the machine's basics: no LLMscope setting passes."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in _MACHINE or k.startswith("LC_")}


@contextmanager
def llmscope_up(data_dir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[RunningStack]:
    """Start `llmscope up`, wait for its banner, yield, then Ctrl-C it and check it exits cleanly."""
    # Seven ports asked for at once: separate asks once gave the simulator Postgres's port.
    port, sim_port, nats_port, pg_port, *health = free_ports(7)
    metrics_ports = dict(zip(("prober", "spc-engine", "alerter"), health, strict=True))
    env = scrubbed_environ()
    env.update(
        LLMSCOPE_DATA_DIR=str(data_dir),
        LLMSCOPE_PORT=str(port),
        LLMSCOPE_SIM_PORT=str(sim_port),
        LLMSCOPE_NATS_PORT=str(nats_port),
        LLMSCOPE_PG_PORT=str(pg_port),
        PYTHONUNBUFFERED="1",
        LLMSCOPE_PROBER_HEALTH_PORT=str(metrics_ports["prober"]),
        LLMSCOPE_SPC_HEALTH_PORT=str(metrics_ports["spc-engine"]),
        LLMSCOPE_ALERTER_HEALTH_PORT=str(metrics_ports["alerter"]),
    )
    env.update(extra_env or {})  # may name the ports too (a second `up` on a first one's ports)
    port, sim_port = int(env["LLMSCOPE_PORT"]), int(env["LLMSCOPE_SIM_PORT"])
    metrics_ports = {
        service: int(env[variable])
        for service, variable in (
            ("prober", "LLMSCOPE_PROBER_HEALTH_PORT"),
            ("spc-engine", "LLMSCOPE_SPC_HEALTH_PORT"),
            ("alerter", "LLMSCOPE_ALERTER_HEALTH_PORT"),
        )
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmscope.stack.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack = RunningStack(
        proc=proc,
        base_url=f"http://127.0.0.1:{port}",
        sim_url=f"http://127.0.0.1:{sim_port}",
        data_dir=data_dir,
        env={**env, "LLMSCOPE_SIM_URL": f"http://127.0.0.1:{sim_port}"},
        metrics_urls={
            "api": f"http://127.0.0.1:{port}/metrics",
            **{service: f"http://127.0.0.1:{p}/metrics" for service, p in metrics_ports.items()},
        },
    )
    reader = threading.Thread(target=_pump, args=(proc, stack.output), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"API key\s+(\S+)", "".join(stack.output))
            if match:
                stack.api_key = match.group(1)
                break
            if proc.poll() is not None:
                raise AssertionError(f"llmscope up exited early:\n{stack.log()}")
            time.sleep(0.2)
        else:
            raise AssertionError(f"llmscope up printed no banner within 120 s:\n{stack.log()}")
        stack.env["LLMSCOPE_API_KEY"] = stack.api_key
        yield stack
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"llmscope up did not stop within 60 s of Ctrl-C:\n{stack.log()}"
                ) from None
        reader.join(5)


def wait_for(
    predicate: object, timeout: float, interval: float = 0.5, what: str | Callable[[], str] = "condition"
) -> object:
    """``predicate()`` once truthy; ``what`` names it on timeout (a callable is called then: a log
    in the message is the log at the timeout, not as it was before the wait)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()  # type: ignore[operator]
        if last:
            return last
        time.sleep(interval)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout} s waiting for {described}; last={last!r}")
