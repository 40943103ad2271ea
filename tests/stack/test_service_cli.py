"""Every ``llmscope <service>`` as a process: ``--help``, bad arguments, signals during start-up,
an unusable database. Nothing listens on the free ports the "unreachable" cases point at."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from llmscope.stack.ports import free_port

CLI = (sys.executable, "-m", "llmscope.stack.cli")

# (subcommand argv, a variable and its default the help must show)
HELP_CASES = [
    (["prober"], "LLMSCOPE_PROBER_INTERVAL_S", "2.0"),
    (["spc-engine"], "LLMSCOPE_SPC_PARTITIONS", "16"),
    (["alerter"], "LLMSCOPE_ALERTER_GROUP_WAIT_S", "30"),
    (["api"], "LLMSCOPE_PORT", "8000"),
    (["sim", "serve"], "LLMSCOPE_SIM_PORT", "11500"),
]


def _nobody() -> str:
    return f"127.0.0.1:{free_port()}"


def _env(**extra: str) -> dict[str, str]:
    """An environment whose NATS, Postgres and simulator are free ports: nothing answers."""
    env = {
        **os.environ,
        "NATS_URL": f"nats://{_nobody()}",
        "DATABASE_URL": f"postgresql://llmscope:hunter2@{_nobody()}/llmscope",
        "LLMSCOPE_API_KEY": "k" * 32,
        "LLMSCOPE_PORT": str(free_port()),
        "LLMSCOPE_SIM_URL": f"http://{_nobody()}",
        "LLMSCOPE_PROBER_HEALTH_PORT": "0",
        "LLMSCOPE_ALERTER_HEALTH_PORT": "0",
        "LLMSCOPE_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *argv,
        env=env or _env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("argv", "variable", "default"), HELP_CASES, ids=lambda v: str(v))
async def test_help_describes_the_service_and_its_variables(
    argv: list[str], variable: str, default: str
) -> None:
    for flag in ("-h", "--help"):
        code, out, err = await _run(*argv, flag)
        assert code == 0, err
        assert out.startswith(f"usage: llmscope {' '.join(argv)}")
        assert "environment variables:" in out
        # The variable, then its default on the same line, as the settings module documents it.
        line = next(line for line in out.splitlines() if line.split()[:1] == [variable])
        assert line.split()[1] == default
        if argv != ["sim", "serve"]:
            assert any(line.split()[:2] == ["NATS_URL", "nats://127.0.0.1:4222"] for line in out.splitlines())
        assert err == ""


@pytest.mark.parametrize("argv", [case[0] for case in HELP_CASES], ids=lambda v: str(v))
async def test_unknown_arguments_exit_2_naming_them(argv: list[str]) -> None:
    code, out, err = await _run(*argv, "--bogus", "extra")
    assert code == 2
    assert out == ""
    assert f"llmscope {argv[0]}" in err
    assert "unrecognized arguments: --bogus extra" in err


# (subcommand argv, a variable it reads at start, the error its bad value "x" gets)
BAD_VARIABLE_CASES = [
    (["api"], "LLMSCOPE_PORT", "expected an integer"),
    (["persister"], "LLMSCOPE_PORT", "expected an integer"),
    (["spc-engine"], "LLMSCOPE_SPC_PARTITIONS", "expected an integer"),
    (["alerter"], "LLMSCOPE_ALERTER_GROUP_WAIT_S", "expected a number"),
    (["prober"], "LLMSCOPE_PROBER_INTERVAL_S", "expected a number"),
    (["sim", "serve"], "LLMSCOPE_SIM_PORT", "expected an integer"),
    (["setup"], "LLMSCOPE_SPC_PARTITIONS", "expected an integer"),
    (["up"], "LLMSCOPE_NATS_PORT", "expected an integer"),
    (["up"], "LLMSCOPE_NATS_MAX_PROCS", "expected an integer"),
]


@pytest.mark.parametrize(("argv", "variable", "error"), BAD_VARIABLE_CASES, ids=lambda v: str(v))
async def test_a_bad_variable_stops_every_command_with_one_line_worded_the_same(
    argv: list[str], variable: str, error: str
) -> None:
    """One format for every command (llmscope.config.env.config_exit): the api and spc-engine
    printed ``llmscope api: X`` where the others printed ``... configuration error: X``."""
    code, out, err = await _run(*argv, env=_env(**{variable: "x"}))
    assert code == 2, err
    assert out == ""
    assert err == f"llmscope {argv[0]}: configuration error: {variable}='x': {error}\n"


# How long a signalled service may take to exit before the test calls it stuck. The waits these
# tests interrupt never end by themselves (NATS and Postgres are retried forever), so an exit at
# all shows the signal ended the wait; the figure only has to outlast a loaded machine.
STOP_DEADLINE_S = 60.0


@dataclass
class Service:
    """A running ``llmscope`` subcommand whose merged output is read line by line."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def wait_for_line(self, text: str, within: float = 10.0) -> str:
        """The first output line containing ``text`` (what the test synchronises on)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"exited before {text!r}:\n" + "".join(self.lines))
                self.lines.append(raw.decode())

    async def stop(self, sig: signal.Signals, within: float = STOP_DEADLINE_S) -> int:
        """Send ``sig``; the exit status. ``within`` is a deadline for a stuck process, not a
        measure of speed: the tests give it room for a loaded machine."""
        assert self.proc.stdout is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(within):
            rest = await self.proc.stdout.read()
            code = await self.proc.wait()
        self.lines.append(rest.decode())
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@asynccontextmanager
async def service(*argv: str, env: dict[str, str]) -> AsyncIterator[Service]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        yield Service(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# What each service logs while it waits, with nothing listening anywhere.
WAITING = {
    "spc-engine": "NATS error; retrying",
    "prober": "NATS error; retrying",
    "alerter": "cannot reach Postgres; retrying",
    "api": "cannot reach Postgres; retrying",
}

# What each service logs once a signal has ended that wait (before it exits).
STOPPED_WAITING = {
    "spc-engine": "stopped before NATS answered",
    "prober": "stopped",
    "alerter": "stopped during start-up",
    "api": "stopped during start-up",
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("command", list(WAITING))
async def test_a_signal_while_waiting_for_nats_or_postgres_ends_the_wait(
    command: str, sig: signal.Signals
) -> None:
    # Nothing ever answers here, so the wait has no end of its own: only the signal can end it.
    async with service(command, env=_env()) as running:
        await running.wait_for_line(WAITING[command])
        code = await running.stop(sig)
    assert code == 0, running.output
    _assert_stopped_while_waiting(running.output, WAITING[command], STOPPED_WAITING[command])
    # Stopping ourselves is no outage: no warning about NATS after the signal.
    assert "disconnected from NATS" not in running.output


@pytest.mark.parametrize("command", ["alerter", "api"])
async def test_a_signal_while_waiting_for_nats_with_postgres_up_ends_the_wait(
    command: str, database_url: str
) -> None:
    async with service(command, env=_env(DATABASE_URL=database_url)) as running:
        await running.wait_for_line("NATS error; retrying")
        code = await running.stop(signal.SIGTERM)
    assert code == 0, running.output
    _assert_stopped_while_waiting(running.output, "NATS error; retrying", STOPPED_WAITING[command])


def _assert_stopped_while_waiting(output: str, waiting: str, stopped: str) -> None:
    """The service said it stopped, after it said it was waiting, and nothing started after that."""
    lines = output.splitlines()
    waited = next(i for i, line in enumerate(lines) if waiting in line)
    said = [i for i, line in enumerate(lines) if _event(line) == stopped]
    assert said, output
    assert said[0] > waited, output
    # Stopped while waiting: not connected, and no service came up after the signal.
    for marker in ("connected to NATS", "resuming partition", "alerter running", "Uvicorn running on"):
        assert marker not in output, output
    assert "Traceback" not in output


def _event(line: str) -> str:
    """The message of a log line (``<time> <level> <service> <logger>: <message> key=value ...``)."""
    rest = line.split(": ", 1)[1] if ": " in line else line
    return re.split(r" [\w.]+=", rest.strip(), maxsplit=1)[0]


@pytest.mark.parametrize("command", ["alerter", "api"])
async def test_unreachable_postgres_is_logged_per_attempt_by_address_never_password(command: str) -> None:
    env = _env()
    address = env["DATABASE_URL"].rsplit("@", 1)[1]  # host:port/database
    async with service(command, env=env) as running:
        first = await running.wait_for_line("cannot reach Postgres; retrying")
        second = await running.wait_for_line("attempt=2")
        code = await running.stop(signal.SIGINT)
    assert code == 0
    for line in (first, second):
        assert f"address={address}" in line
    assert "hunter2" not in running.output
    assert "Traceback" not in running.output


@pytest.mark.parametrize("command", ["alerter", "api"])
async def test_postgres_that_refuses_us_ends_with_one_clear_line(command: str, database_url: str) -> None:
    # The server answers, but the database does not exist: waiting would not help.
    parts = urlsplit(database_url)
    host = f"{parts.hostname}:{parts.port}"
    url = f"postgresql://{parts.username or 'postgres'}:hunter2@{host}/no_such_db"
    code, out, err = await _run(command, env=_env(DATABASE_URL=url))
    assert code == 1, err
    lines = [line for line in err.splitlines() if "cannot use Postgres" in line]
    assert lines == [
        f'llmscope {command}: cannot use Postgres at {host}/no_such_db: database "no_such_db" does not exist'
    ], err
    assert "Traceback" not in err
    assert "hunter2" not in out + err


async def test_sim_serve_stops_on_sigterm() -> None:
    async with service("sim", "serve", "--port", str(free_port()), env=_env()) as running:
        await running.wait_for_line("simulated LLM endpoint serving")
        code = await running.stop(signal.SIGTERM)
    assert code == 0, running.output


# What each service logs once it is up and connected.
RUNNING = {
    "spc-engine": "resuming partition",
    "alerter": "alerter running",
    "api": "Uvicorn running on",
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("command", list(RUNNING))
async def test_a_signal_while_running_stops_cleanly_without_a_disconnect_warning(
    command: str, sig: signal.Signals, nats_url: str, database_url: str
) -> None:
    env = _env(NATS_URL=nats_url, DATABASE_URL=database_url, LLMSCOPE_SPC_PARTITIONS="1")
    async with service(command, env=env) as running:
        await running.wait_for_line(RUNNING[command], within=20)
        code = await running.stop(sig)
    assert code == 0, running.output
    assert "Traceback" not in running.output
    # Our own close is an info line; only an outage while running is worth a warning.
    assert "disconnected from NATS" not in running.output
    assert "NATS connection closed" in running.output
