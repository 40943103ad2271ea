"""Waiting for a dependency at start: retried while unreachable, refused at once, cut by ``stop``."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from llmscope.config.startup import (
    Stopped,
    Unusable,
    address,
    postgres_unavailable,
    unless_stopped,
    until_reachable,
    wait_for_postgres,
)


def test_address_names_host_port_and_database_never_credentials() -> None:
    assert address("postgresql://ann:s3cret@db.example:5433/llmscope") == "db.example:5433/llmscope"
    assert address("postgres://db/llmscope") == "db/llmscope"
    assert address("nats://ann:s3cret@[::1]:4222") == "[::1]:4222"
    assert "s3cret" not in address("postgresql://ann:s3cret@h:x/db")  # malformed port


async def test_unless_stopped_returns_the_result_or_raises_stopped_at_once() -> None:
    stop = asyncio.Event()
    assert await unless_stopped(asyncio.sleep(0, "done"), stop) == "done"
    assert await unless_stopped(asyncio.sleep(0, "no stop"), None) == "no stop"
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(Stopped):
        await asyncio.wait_for(unless_stopped(forever(), stop), 2)
    assert cancelled.is_set()  # the abandoned attempt was cancelled, not left running


async def test_until_reachable_retries_unreachable_with_a_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def open_() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        return "pool"

    url = "postgresql://ann:s3cret@127.0.0.1:5432/llmscope"
    with caplog.at_level(logging.WARNING, logger="llmscope.startup"):
        pool = await until_reachable(
            open_, what="Postgres", url=url, stop=asyncio.Event(), first_delay=0.01, max_delay=0.02
        )
    assert pool == "pool"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["cannot reach Postgres; retrying"] * 2
    contexts = [getattr(r, "ctx", {}) for r in caplog.records]
    assert [c["attempt"] for c in contexts] == [1, 2]
    assert {c["address"] for c in contexts} == {"127.0.0.1:5432/llmscope"}
    assert "s3cret" not in caplog.text


async def test_until_reachable_gives_up_at_once_when_refused() -> None:
    calls = 0

    async def refused() -> str:
        nonlocal calls
        calls += 1
        raise ValueError('database "nope" does not exist\nhint')

    with pytest.raises(Unusable) as info:
        await until_reachable(
            refused, what="Postgres", url="postgresql://ann:s3cret@h:1/nope", stop=None, first_delay=0.01
        )
    assert str(info.value) == 'cannot use Postgres at h:1/nope: database "nope" does not exist'
    assert calls == 1


async def test_until_reachable_stops_while_waiting_between_attempts() -> None:
    stop = asyncio.Event()

    async def open_() -> str:
        stop.set()  # the signal arrives during the first attempt's failure
        raise OSError("unreachable")

    with pytest.raises(Stopped):
        await asyncio.wait_for(
            until_reachable(open_, what="Postgres", url="postgresql://h/db", stop=stop, first_delay=60), 2
        )


async def test_postgres_still_starting_is_waited_for() -> None:
    class CannotConnectNow(Exception):
        sqlstate = "57P03"  # as asyncpg.CannotConnectNowError: "the database system is starting up"

    calls = 0

    async def open_() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise CannotConnectNow("the database system is starting up")
        return "pool"

    waited = wait_for_postgres(open_, dsn="postgresql://h:1/db", stop=None)
    assert await asyncio.wait_for(waited, 5) == "pool"
    assert calls == 2


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), True),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), True),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), True),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        # The data's fault, or a bug: waiting would never help.
        (asyncpg.exceptions._base.DataError("value out of int32 range"), False),
        (asyncpg.exceptions.NumericValueOutOfRangeError("overflow"), False),
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence 0x00"), False),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), False),
        (asyncpg.exceptions.UndefinedColumnError("no such column"), False),
        (ValueError("bug"), False),
    ],
)
def test_postgres_unavailable_tells_an_outage_from_bad_data(exc: Exception, transient: bool) -> None:
    assert postgres_unavailable(exc) is transient
