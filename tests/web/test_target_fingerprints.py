"""Two stored targets told apart only by their secrets (two keys of one gateway, two passwords)
print apart: each hidden value has a short fingerprint, never the secret, so the dashboard's
links and forms, which carry the target as printed, reach the target they name rather than the
first that prints alike (``userinfo``).

The fingerprint is keyed (HMAC-SHA256 under a random key of the installation, kept in the API's
database): a screenshot's fingerprint cannot be checked against a dictionary of weak passwords,
nor matched across installations; every API replica on one database prints the same one; with no
key, the hidden value prints as ``•••`` alone, never an unkeyed hash."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from llmscope.api.db import create_pool
from llmscope.api.persister import store_telemetry
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto.charts import chart_key
from llmscope.proto.redaction import HIDDEN, redacted, without_fingerprints
from llmscope.stack.ports import free_port
from llmscope.web.userinfo import (
    fingerprint_key,
    hidden,
    printed_chart_key,
    release_fingerprint_key,
    stored_chart_key,
    stored_target,
    use_fingerprint_key,
    without_password,
)
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY, Api, serve
from tests.api.factories import telemetry
from tests.web.test_pages import login

PAIRS = [
    ("https://bot:first-pw@gw.example/v1", "https://bot:second-pw@gw.example/v1"),
    ("https://tok-first@gw.example/v1", "https://tok-second@gw.example/v1"),
    ("https://gw.example/v1?api-key=first&x=1", "https://gw.example/v1?api-key=second&x=1"),
    ("https://gw.example/v1?next=/x?token=first", "https://gw.example/v1?next=/x?token=second"),
    (
        "https://gw.example/v1?r=https%3A%2F%2Fu%3Afirst%40h",
        "https://gw.example/v1?r=https%3A%2F%2Fu%3Asecond%40h",
    ),
]
# Passwords of the kind a dictionary of common ones holds.
WEAK = ["s3cret", "password", "123456", "qwerty", "letmein", "admin", "welcome1", "dragon", "monkey"]
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
TARGET = "https://bot:s3cret@gw.example/v1"
FINGERPRINTED = re.compile(rf'title="https://bot:{HIDDEN}([0-9a-f]{{4}})@gw\.example/v1"')


def unkeyed(secret: str) -> list[str]:
    """What an unkeyed hash would print: the first 4 hex of SHA-256, bare and as bb12e91 salted it."""
    data = secret.encode()
    return [
        hashlib.sha256(data).hexdigest()[:4],
        hashlib.sha256(b"llmscope.target-secret\x00" + data).hexdigest()[:4],
    ]


@pytest.fixture
def installation() -> Iterator[bytes]:
    """An installation's key in use, as the API's start-up sets it."""
    key = os.urandom(32)
    use_fingerprint_key(key)
    try:
        yield key
    finally:
        release_fingerprint_key(key)


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_targets_that_differ_in_their_secret_print_apart_and_map_back(
    installation: bytes, first: str, second: str
) -> None:
    stored = [first, second]
    printed = [without_password(t) for t in stored]
    assert printed[0] != printed[1]
    for target, shown in zip(stored, printed, strict=True):
        assert "first" not in shown
        assert "second" not in shown
        assert stored_target(shown, stored) == target
        key = chart_key("ollama", "m", target, "simple-1", "latency_ms")
        assert stored_chart_key(printed_chart_key(key), stored) == key
    # A link printed before fingerprints ("•••" alone) still reaches the first that prints so.
    legacy = without_fingerprints(printed[1])
    assert HIDDEN in legacy
    assert legacy != printed[1]
    assert stored_target(legacy, stored) == first
    # One printed under another key (another installation, or bb12e91's unkeyed hour) reaches
    # none: its fingerprint names no target here.
    assert stored_target(redacted(second, KEY_A), stored) is None


def test_the_fingerprint_is_an_hmac_under_the_key_and_no_unkeyed_hash() -> None:
    assert hidden("s3cret") == HIDDEN  # no key: no fingerprint
    for secret in WEAK:
        keyed = redacted(f"https://u:{secret}@h/v1", KEY_A)
        mac = hmac.new(KEY_A, secret.encode(), hashlib.sha256).hexdigest()[:4]
        assert keyed == f"https://u:{HIDDEN}{mac}@h/v1"
        assert mac not in unkeyed(secret), secret
    # Two installations print one secret apart (of 9 weak passwords, none alike under these keys).
    for secret in WEAK:
        assert redacted(f"https://h/v1?key={secret}", KEY_A) != redacted(f"https://h/v1?key={secret}", KEY_B)
    # A printed value prints as it is, under any key.
    assert redacted(redacted(TARGET, KEY_A), KEY_B) == redacted(TARGET, KEY_A)


def test_no_key_prints_the_hidden_value_alone(installation: bytes) -> None:
    assert fingerprint_key() == installation
    assert without_password(TARGET) == redacted(TARGET, installation) != redacted(TARGET)
    release_fingerprint_key(os.urandom(32))  # another runtime's close: this key stays
    assert fingerprint_key() == installation
    release_fingerprint_key(installation)
    assert fingerprint_key() is None
    assert without_password(TARGET) == "https://bot:•••@gw.example/v1"
    assert without_password("https://h/v1?key=s3cret&x=1") == "https://h/v1?key=•••&x=1"
    assert hidden("s3cret") == HIDDEN
    # Nor does a printed link lose its way: "•••" alone reaches the first target printed so.
    assert stored_target("https://bot:•••@gw.example/v1", ["local", TARGET]) == TARGET


async def printed_on_models(client: httpx.AsyncClient) -> str:
    """The fingerprint the models page prints for :data:`TARGET`."""
    page = await client.get("/models")
    assert page.status_code == 200, page.text[:300]
    assert "s3cret" not in page.text
    found = set(FINGERPRINTED.findall(page.text))
    assert len(found) == 1, found
    return str(found.pop())


async def seed(database_url: str) -> None:
    now = datetime.now(UTC)
    probes = [
        telemetry(i, id=f"fp-{i}", target=TARGET, ts=now - timedelta(minutes=2 * (30 - i))) for i in range(30)
    ]
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await store_telemetry(conn, probes)
    finally:
        await pool.close()


async def stored_key(database_url: str) -> bytes:
    conn = await asyncpg.connect(database_url)
    try:
        key = await conn.fetchval("SELECT key FROM target_fingerprint_key")
    finally:
        await conn.close()
    assert isinstance(key, bytes)
    assert len(key) == 32
    return key


@pytest.fixture
async def other_database_url(database_url: str) -> AsyncIterator[str]:
    """A second installation's database, on the same server."""
    base, _, _ = database_url.rpartition("/")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_two_installations_print_one_secret_apart(
    settings: ApiSettings, database_url: str, other_database_url: str
) -> None:
    printed = []
    for url in (database_url, other_database_url):
        await seed(url)
        installation = dataclasses.replace(settings, database_url=Secret(url))
        async with serve(installation) as api:
            fingerprint = await printed_on_models(await login(api))
            assert fingerprint not in unkeyed("s3cret")
            key = await stored_key(url)
            assert fingerprint == hmac.new(key, b"s3cret", hashlib.sha256).hexdigest()[:4]
            printed.append(fingerprint)
        assert fingerprint_key() is None  # closed: nothing left for the next test
    assert printed[0] != printed[1]


@contextlib.asynccontextmanager
async def api_process(env: dict[str, str], log: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A ``python -m llmscope.api`` of its own, ready, and a client logged in to its dashboard."""
    port = free_port()
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmscope.api",
            env={**os.environ, **env, "LLMSCOPE_PORT": str(port)},
            stdout=out,
            stderr=out,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def ready() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            await eventually(ready, within=60, what=f"the API on {port} ready ({log})")
            r = await client.post("/login", data={"key": API_KEY, "next": "/models"})
            assert r.status_code == 303, r.text[:300]
            yield client
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_two_api_processes_on_one_database_print_alike_and_after_a_restart(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LLMSCOPE_API_KEY": API_KEY,
        "LLMSCOPE_HOST": "127.0.0.1",
    }
    log = tmp_path / "api.log"
    async with api_process(env, log) as first, api_process(env, log) as second:
        await seed(database_url)
        printed = [await printed_on_models(first), await printed_on_models(second)]
    async with api_process(env, log) as restarted:
        printed.append(await printed_on_models(restarted))
    key = await stored_key(database_url)
    assert printed == [hmac.new(key, b"s3cret", hashlib.sha256).hexdigest()[:4]] * 3


async def test_the_dashboard_charts_the_target_its_link_names(api: Api) -> None:
    first, second = PAIRS[2]
    now = datetime.now(UTC)
    probes = [
        telemetry(i, id=f"{n}-{i}", target=t, host=f"gpu-{n}", ts=now - timedelta(minutes=2 * (30 - i)))
        for n, t in enumerate((first, second))
        for i in range(30)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
    client = await login(api)
    asked = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "24"}
    for target in (first, second):
        shown = without_password(target)
        assert shown != without_fingerprints(shown)  # the API's key is in use
        other = without_password(second if target == first else first)
        page = (await client.get("/dashboard", params={**asked, "target": shown})).text
        html = shown.replace("&", "&amp;")
        assert f'<option value="{html}" selected>' in page
        assert f'<option value="{other.replace("&", "&amp;")}" >' in page
        assert f"target {html}" in page
