"""The embedded servers `llmscope up` relies on: start, keep data across restarts, report busy ports,
and, given credentials, refuse everyone without them."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import PortInUseError, free_port
from tests.stack.access import nats_answer, pg_refusal


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """Not under pytest's basetemp: as root the server runs as an unprivileged user, cut off from
    /tmp/pytest-of-root whenever another pytest starts (see tests/conftest.py)."""
    with tempfile.TemporaryDirectory(prefix="llmscope-test-pg-") as tmp:
        yield Path(tmp)


def test_postgres_keeps_its_data_across_restarts(pg_tmp: Path) -> None:
    server = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False)
    server.start()
    try:
        url = server.create_database("llmscope")
        asyncio.run(_execute(url, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"))
    finally:
        server.stop()
    again = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False)
    again.start()
    try:
        assert again.create_database("llmscope") == again.url("llmscope")
        assert asyncio.run(_fetchval(again.url("llmscope"), "SELECT v FROM kept")) == 42
    finally:
        again.stop()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_postgres_settings_are_given_at_every_start(pg_tmp: Path) -> None:
    """A benchmark's server parameters reach a new cluster and one started again, without
    touching its configuration files."""
    settings = {"track_commit_timestamp": "on", "work_mem": "7MB"}
    for _ in range(2):
        server = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False, settings=settings)
        server.start()
        try:
            url = server.url()
            assert asyncio.run(_fetchval(url, "SHOW track_commit_timestamp")) == "on"
            assert asyncio.run(_fetchval(url, "SHOW work_mem")) == "7MB"
        finally:
            server.stop()
    assert "work_mem" not in (pg_tmp / "pg" / "postgresql.auto.conf").read_text()


def test_busy_ports_are_reported_with_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port}.*LLMSCOPE_NATS_PORT"):
            EmbeddedNats(tmp_path / "n", port).start()
        with pytest.raises(PortInUseError, match="LLMSCOPE_PG_PORT"):
            EmbeddedPostgres(tmp_path / "p", port).start()


def _local_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    return [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    ]


async def _nats_round_trip(url: str) -> bytes:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        sub = await nc.subscribe("check")
        await nc.publish("check", b"in")
        return (await sub.next_msg(timeout=5)).data
    finally:
        await nc.close()


def test_nats_with_users_refuses_anonymous_and_wrong_passwords(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", free_port(), users={"llmscope": "s3cret-pass"})
    server.start()
    try:
        assert nats_answer(server.port, {}) == "-ERR 'Authorization Violation'"
        wrong = {"user": "llmscope", "pass": "guess"}
        assert nats_answer(server.port, wrong) == "-ERR 'Authorization Violation'"
        right = {"user": "llmscope", "pass": "s3cret-pass"}
        assert nats_answer(server.port, right) == "PONG"
        assert asyncio.run(_nats_round_trip(server.url_for("llmscope"))) == b"in"
        # The password is in a file only the owner reads, never on the public command line.
        config = tmp_path / "nats" / "nats-server.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert "s3cret-pass" in config.read_text()
        assert server.process is not None
        assert "s3cret-pass" not in Path(f"/proc/{server.process.pid}/cmdline").read_text()
    finally:
        server.stop()


def test_postgres_with_a_password_refuses_clients_without_it(pg_tmp: Path) -> None:
    server = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False, password="pg-s3cret")
    server.start()
    try:
        url = server.create_database("llmscope")
        base = f"127.0.0.1:{server.port}/llmscope"
        assert "password authentication failed" in pg_refusal(f"postgresql://postgres@{base}")
        assert "password authentication failed" in pg_refusal(f"postgresql://postgres:guess@{base}")
        assert "password authentication failed" in pg_refusal(f"postgresql://nobody@{base}")
        # The server's own socket asks for the password too.
        socket_url = f"postgresql://postgres@/llmscope?host={pg_tmp / 'pg'}&port={server.port}"
        assert "password authentication failed" in pg_refusal(socket_url)
        assert pg_refusal(url) == ""
        assert asyncio.run(_fetchval(url, "SHOW listen_addresses")) == "127.0.0.1"
        rules = asyncio.run(_fetchval(url, "SELECT array_agg(DISTINCT auth_method) FROM pg_hba_file_rules"))
        assert rules == ["scram-sha-256"]
        assert "pg-s3cret" not in (pg_tmp / "pg.log").read_text()
    finally:
        server.stop()


def test_postgres_listens_on_loopback_only(pg_tmp: Path) -> None:
    others = _local_addresses()
    if not others:
        pytest.skip("this machine has no address besides loopback to try")
    server = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False, password="pg-s3cret")
    server.start()
    try:
        for address in others:
            refused = pg_refusal(f"postgresql://postgres:pg-s3cret@{address}:{server.port}/postgres")
            assert "refused" in refused.lower(), (address, refused)
    finally:
        server.stop()


def test_a_cluster_created_open_is_closed_at_its_next_start(pg_tmp: Path) -> None:
    """A data directory from before passwords (``--auth=trust``) needs the password once restarted."""
    open_server = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False)
    open_server.start()
    try:
        url = open_server.create_database("llmscope")
        asyncio.run(_execute(url, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)"))
    finally:
        open_server.stop()
    closed = EmbeddedPostgres(pg_tmp / "pg", free_port(), durable=False, password="now-closed")
    closed.start()
    try:
        base = f"127.0.0.1:{closed.port}/llmscope"
        assert "password authentication failed" in pg_refusal(f"postgresql://postgres@{base}")
        assert asyncio.run(_fetchval(closed.url("llmscope"), "SELECT v FROM kept")) == 7
        rules = asyncio.run(
            _fetchval(closed.url(), "SELECT array_agg(DISTINCT auth_method) FROM pg_hba_file_rules")
        )
        assert rules == ["scram-sha-256"]
    finally:
        closed.stop()


def _varz(port: int) -> dict[str, object]:
    deadline = time.monotonic() + 30  # the monitoring port may open just after the client port
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10) as r:
                varz: dict[str, object] = json.load(r)
            return varz
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize(("max_procs", "expected"), [(None, 1), (2, 2)])
def test_nats_runs_on_the_cores_it_is_given(tmp_path: Path, max_procs: int | None, expected: int) -> None:
    """One core by default (NATS_MAX_PROCS): nats-server's own report of its GOMAXPROCS."""
    monitor = free_port()
    if max_procs is None:
        server = EmbeddedNats(tmp_path / "nats", free_port(), monitor_port=monitor)
    else:
        server = EmbeddedNats(tmp_path / "nats", free_port(), monitor_port=monitor, max_procs=max_procs)
    server.start()
    try:
        assert _varz(monitor)["gomaxprocs"] == expected
    finally:
        server.stop()
