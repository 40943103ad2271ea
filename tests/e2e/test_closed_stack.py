"""`llmscope up` is closed by default and its children never outlive it.

One real `up`: its data directory and key files are its owner's alone, the embedded NATS and
PostgreSQL turn away anyone without the generated passwords, a nats-server or PostgreSQL killed
under it is restarted (one line each), and when `up` itself is killed with SIGKILL every process
it started exits, so a second `up` on the same ports starts at once.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import os
import stat
import time
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
import psutil
import pytest

from llmscope.proto import permissions, subjects
from llmscope.stack.embedded import PG_SYSTEM_USER
from tests.e2e.stack import RunningStack, llmscope_up, wait_for
from tests.stack.access import nats_answer, pg_refusal

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

PORT_VARIABLES = (
    "LLMSCOPE_PORT",
    "LLMSCOPE_SIM_PORT",
    "LLMSCOPE_NATS_PORT",
    "LLMSCOPE_PG_PORT",
    "LLMSCOPE_PROBER_HEALTH_PORT",
    "LLMSCOPE_SPC_HEALTH_PORT",
    "LLMSCOPE_ALERTER_HEALTH_PORT",
)
NATS_SECRETS = ("nats_password", *(f"nats_password_{user}" for user in permissions.SERVICE_USERS))
KEY_FILES = ("api_key", *NATS_SECRETS, "pg_password", "client.env", "nats/nats-server.conf")


def _assert_owner_only(data_dir: Path) -> None:
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if os.geteuid() == 0:
        # As root PostgreSQL runs as its own user, whose group may traverse the directory, no more.
        assert mode == 0o710, oct(mode)
        assert data_dir.stat().st_gid == grp.getgrnam(PG_SYSTEM_USER).gr_gid
    else:
        assert mode == 0o700, oct(mode)
    for name in KEY_FILES:
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    for path in data_dir.rglob("*"):
        if not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & stat.S_IRWXO == 0, path


def _cmdline(proc: psutil.Process) -> str:
    """Its command line; "" once gone (PostgreSQL's backends come and go)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def _children(stack: RunningStack, name: str) -> list[psutil.Process]:
    return [p for p in psutil.Process(stack.proc.pid).children() if _name(p) == name]


def _restarted(stack: RunningStack, name: str, before: int, mark: int) -> bool:
    """`up` said it restarts ``name`` (anywhere in its output since ``mark``, the kill: services
    print bursts of lines as NATS or PostgreSQL comes back) and a new ``name`` runs."""
    line = f"llmscope: {name} exited with code -9; restarting in"
    return line in stack.since(mark) and any(p.pid != before for p in _children(stack, name))


def _members_announced(nats_url: str) -> bool:
    """The SPC engine's members bucket exists and holds a replica's key."""

    async def check() -> bool:
        try:
            nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=2)
        except (nats.errors.Error, OSError):
            return False
        try:
            members = await nc.jetstream().key_value(subjects.SPC_MEMBERS_BUCKET)
            return bool(await members.keys())
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return False  # NoKeysError and BucketNotFoundError among them
        finally:
            await nc.close()

    return asyncio.run(check())


def _restart_report(stack: RunningStack, name: str, mark: int) -> str:
    return f"{name} restarted; `up` printed since the kill:\n{stack.since(mark)}"


def _wait_ready(stack: RunningStack, timeout: float = 90) -> None:
    """Until /readyz says the API reaches PostgreSQL and NATS; its last answer on failure."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{stack.base_url}/readyz", timeout=5)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if reply.status_code == 200:
                return
            last = f"{reply.status_code} {reply.text}"
        time.sleep(0.5)
    raise AssertionError(f"/readyz not ready within {timeout} s: {last}\n{stack.log()}")


def test_up_is_closed_restarts_its_servers_and_leaves_nothing_behind(data_dir: Path) -> None:
    with llmscope_up(data_dir) as stack:
        _assert_owner_only(data_dir)
        urls = stack.client_env()
        nats_port, pg_port = stack.env["LLMSCOPE_NATS_PORT"], stack.env["LLMSCOPE_PG_PORT"]
        password = (data_dir / "nats_password").read_text().strip()

        # Nobody gets in without the generated passwords.
        assert nats_answer(int(nats_port), {}) == "-ERR 'Authorization Violation'"
        assert (
            nats_answer(int(nats_port), {"user": "operator", "pass": "guess"})
            == "-ERR 'Authorization Violation'"
        )
        assert nats_answer(int(nats_port), {"user": "operator", "pass": password}) == "PONG"
        for user in ("postgres", "postgres:guess", "llmscope"):
            refused = pg_refusal(f"postgresql://{user}@127.0.0.1:{pg_port}/llmscope")
            assert "password authentication failed" in refused, (user, refused)
        assert pg_refusal(urls["DATABASE_URL"]) == ""
        # Each service connects as its own NATS user (llmscope.proto.permissions).
        for service in permissions.SERVICE_USERS:
            [child] = [
                p for p in psutil.Process(stack.proc.pid).children() if _cmdline(p).endswith(f"cli {service}")
            ]
            assert child.environ()["NATS_URL"].startswith(f"nats://{service}:"), service
        [sim] = [
            p for p in psutil.Process(stack.proc.pid).children() if _cmdline(p).endswith("cli sim serve")
        ]
        assert "NATS_URL" not in sim.environ()
        # No password is on a command line (public in /proc), nor in what `up` prints.
        nats_passwords = [(data_dir / name).read_text().strip() for name in NATS_SECRETS]
        for proc in psutil.Process(stack.proc.pid).children(recursive=True):
            assert not any(secret in _cmdline(proc) for secret in nats_passwords)
        assert not any(secret in stack.log() for secret in nats_passwords)
        assert (data_dir / "pg_password").read_text().strip() not in stack.log()

        # Embedded servers are supervised like the services.
        _wait_ready(stack)
        for name in ("nats-server", "postgres"):
            [server] = _children(stack, name)
            mark = stack.mark()
            server.kill()
            wait_for(
                lambda n=name, b=server.pid, m=mark: _restarted(stack, n, b, m),
                60,
                what=functools.partial(_restart_report, stack, name, mark),
            )
        assert nats_answer(int(nats_port), {"user": "operator", "pass": password}) == "PONG"
        # The engine announces itself again after the restart (its members bucket is on disk; `up`
        # also runs the setup step again, for anything a restart could have lost).
        operator_url = f"nats://operator:{password}@127.0.0.1:{nats_port}"
        wait_for(lambda: _members_announced(operator_url), 60, what="the SPC engine announced again")
        wait_for(lambda: pg_refusal(urls["DATABASE_URL"]) == "", 60, what="postgres back")
        _wait_ready(stack)

        # SIGKILL leaves `up` no chance to stop anything: the kernel's parent-death signal does.
        descendants = psutil.Process(stack.proc.pid).children(recursive=True)
        assert {"nats-server", "postgres"} <= {_name(p) for p in descendants}
        assert len([p for p in descendants if "llmscope.stack.cli" in _cmdline(p)]) == 5
        stack.proc.kill()
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        same_ports = {variable: stack.env[variable] for variable in PORT_VARIABLES}
        key = stack.api_key

    # No orphan holds a port: the same ports, the same data, the same key.
    with llmscope_up(data_dir, same_ports) as again:
        assert again.api_key == key
        _wait_ready(again)
        _assert_owner_only(data_dir)
    assert again.proc.returncode == 0, again.log()
