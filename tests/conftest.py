"""Real infrastructure for tests: nats-server with JetStream and PostgreSQL.

Without ``NATS_URL`` / ``DATABASE_URL`` the fixtures start their own servers on free ports in
temporary directories. With them, tests use the given servers: every test still gets a fresh
database, and LLMscope's streams and KV buckets are deleted before each test that asks for NATS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import free_port


@pytest.fixture(autouse=True)
def restored_logging(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Logging as it was before the test, put back after it: a service's ``main()`` run in-process
    sets logging up as the service does (``setup_logging``: the root logger at INFO to stderr,
    pytest's own handlers dropped, third-party loggers quietened), which every later test of the
    run would otherwise inherit."""
    per_phase = type(caplog.handler)  # pytest's capture handlers, installed anew for each phase
    root = logging.getLogger()
    kept = [h for h in root.handlers if not isinstance(h, per_phase)]
    level = root.level
    loggers = {
        name: (logger.level, logger.filters[:])
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.setLevel(level)
    root.handlers[:] = kept + [h for h in root.handlers if isinstance(h, per_phase)]
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            saved_level, filters = loggers.get(name, (logging.NOTSET, []))
            if logger.level != saved_level:
                logger.setLevel(saved_level)
            logger.filters[:] = filters


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A NATS server with JetStream and no LLMscope state: fresh per test."""
    external = os.environ.get("NATS_URL")
    if external:
        asyncio.run(_wipe_jetstream(external))
        yield external
        return
    # Tied to this process: a pytest killed mid-test (a CI step's timeout) leaves no server behind.
    server = EmbeddedNats(tmp_path / "nats", free_port(), tie_to_parent=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def _wipe_jetstream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        for info in await jsm.streams_info():
            name = info.config.name or ""
            if name.startswith(("LLMSCOPE", "KV_llmscope")):
                await jsm.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def embedded_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """An embedded nats-server the test controls (stop, kill, restart on the same store)."""
    server = EmbeddedNats(tmp_path / "nats-ctl", free_port(), tie_to_parent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    """JetStream with LLMscope's streams created."""
    context = nc.jetstream()
    await ensure_streams(context, BusSettings())
    return context


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres | None]:
    """One PostgreSQL for the session (None when DATABASE_URL is given)."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    # Not under pytest's basetemp: as root the server runs as an unprivileged user, and every
    # pytest process that starts resets /tmp/pytest-of-<user> to mode 0700, which would cut the
    # server off from its own data directory while another pytest runs beside this one.
    with tempfile.TemporaryDirectory(prefix="llmscope-test-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data", free_port(), durable=False, tie_to_parent=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own, to stop and start (outside basetemp: see postgres_server)."""
    with tempfile.TemporaryDirectory(prefix="llmscope-test-pg-own-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data", free_port(), durable=False, tie_to_parent=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def database_url(postgres_server: EmbeddedPostgres | None) -> AsyncIterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    admin_url = os.environ.get("DATABASE_URL") or (postgres_server.url() if postgres_server else "")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(autouse=True)
def _factory_probes_thirty_minutes_old(request: pytest.FixtureRequest) -> Iterator[None]:
    """``tests.api.factories.telemetry`` dates its probes from ``T0``, 30 minutes before now, as
    tests that read "recent" windows (the overview's hour, the models page) expect. ``T0`` was
    fixed when the module was imported, so in a suite longer than 30 minutes those probes had
    left the hour by the time the web tests ran. For each test, T0 is taken afresh, unless the
    test's module imported ``T0`` itself (its own times are derived from that value)."""
    from tests.api import factories

    if "T0" in vars(request.module):
        yield
        return
    fixed = factories.T0
    factories.T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    try:
        yield
    finally:
        factories.T0 = fixed


LEFTOVER_GRACE_S = 5.0
"""How long a child the test signalled may take to exit before it counts as left behind."""


def _running_children() -> dict[int, psutil.Process]:
    """This process's children that still run (an exited child not yet waited for is a zombie:
    it holds no port, no file and no CPU)."""
    running: dict[int, psutil.Process] = {}
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                running[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return running


_WIDER_FIXTURE_CHILDREN: set[int] = set()
"""Children started by module- or session-scoped fixtures: they outlive a test by design."""


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object]) -> Iterator[None]:
    # A wider fixture is usually set up before the guard below, but not when a test first asks
    # for it mid-test (request.getfixturevalue): its server would be taken for a leak and killed
    # under the tests that share it.
    if fixturedef.scope == "function":
        yield
        return
    before = set(_running_children())
    yield
    _WIDER_FIXTURE_CHILDREN.update(set(_running_children()) - before)


@pytest.fixture(autouse=True)
def _no_process_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every process a test (or its function-scoped fixtures) starts is stopped by the end of its
    teardown, whether it passed or failed: one left running (an SPC engine still charting, a
    nats-server in a session of its own) outlives the suite as an orphan. Session-scoped servers
    are up before this runs, so they are not counted. A leftover is killed, then reported as an
    error of the test that left it."""
    before = set(_running_children())
    yield
    left = {pid: p for pid, p in _running_children().items() if pid not in before | _WIDER_FIXTURE_CHILDREN}
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid: p for pid, p in _running_children().items() if pid in left}
    if not left:
        return
    described = []
    for child in left.values():
        try:
            described.append(f"{child.pid}: {' '.join(child.cmdline())}")
            child.kill()
            child.wait(10)
        except psutil.Error:
            pass
    pytest.fail(f"{request.node.nodeid} left processes running (now killed): {'; '.join(described)}")
