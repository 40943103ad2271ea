"""Postgres frozen (SIGSTOP of the whole server) while telemetry is posted through the API and the
in-process persister runs: ``POST /api/stats`` keeps answering 202 (it needs only JetStream),
``/readyz`` says the database is unavailable and ``/healthz`` that the process answers, and after
SIGCONT every accepted event is stored exactly once, with nothing dead-lettered.

A frozen server is not a stopped one: connections stay open and the kernel still accepts new ones,
so no error comes back at all; only the client's own time limits (``CLIENT_MARGIN_S`` past the
statement timeout, ``CONNECT_TIMEOUT_S``) turn the silence into an error the persister waits out.
A Postgres *stopped* for longer than the old give-up time is ``test_persister_outage.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmscope.stack.embedded import EmbeddedPostgres
from tests.alerter.harness import eventually
from tests.api.conftest import serve
from tests.api.faults import assert_stored_once, persister_settings, stored_ids, telemetry_batch

pytestmark = pytest.mark.fault

BATCH = 20
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)


def batch(n: int) -> list[dict[str, object]]:
    return telemetry_batch(n, prefix="f", size=BATCH, t0=T0, models=3)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (in parentheses) may hold spaces: the fields after it are fixed.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def frozen(server: EmbeddedPostgres) -> Iterator[None]:
    """SIGSTOP the postmaster, then every process it started; SIGCONT them however the test ends.

    Postgres puts each backend in a session of its own, so the postmaster's process group is
    the postmaster alone: its children are found by parent. Stopped first, it starts no more.
    """
    proc = server.process
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = [proc.pid]
    try:
        for pid in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        assert len(stopped) > 2  # the postmaster, its workers and the pool's backends
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_postgres_frozen_while_events_are_posted_loses_and_dead_letters_nothing(
    own_postgres: EmbeddedPostgres, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = own_postgres.create_database("frozen")
    # The client gives up 5 s past the statement timeout (CLIENT_MARGIN_S): a try on a frozen
    # server takes ~6 s.
    settings = persister_settings(dsn, nats_url, db_statement_timeout_s=1.0)
    caplog.set_level(logging.INFO, logger="llmscope.bus.consumer")
    accepted: set[str] = set()
    async with serve(settings) as api:
        persister = api.runtime.persister
        assert persister is not None
        pool = api.store.pool

        async def post(n: int) -> None:
            r = await api.client.post("/api/stats", json=batch(n), timeout=60)
            # JetStream alone decides a 202: a frozen database is no reason to refuse telemetry.
            assert r.status_code == 202, (r.status_code, r.text[:300])
            accepted.update(r.json()["ids"])

        async def sender(stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                await post(n)
                n += 1
                await asyncio.sleep(0.05)  # a steady trickle, not a flood

        await post(9999)
        await eventually(lambda: persister.telemetry.processed == BATCH, what="the first batch stored")

        stop = asyncio.Event()
        sending = asyncio.create_task(sender(stop))
        try:
            with frozen(own_postgres):
                # The persister holds its batch through at least two failed tries (each ends at
                # the client's time limit), while posting goes on.
                await eventually(
                    lambda: persister.telemetry.unavailable_tries >= 2,
                    within=60,
                    what="the persister waiting out the frozen database",
                )
                ready = await api.anon.get("/readyz", timeout=30)
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"].startswith("unavailable")
                assert (await api.anon.get("/healthz", timeout=5)).status_code == 200
                # A read that needs Postgres is a 503 with Retry-After, not a hang.
                r = await asyncio.wait_for(api.client.get("/api/violations"), 30)
                assert r.status_code == 503, (r.status_code, r.text[:300])
                assert int(r.headers["retry-after"]) > 0
                during = len(accepted)
                assert not sending.done()
        finally:
            stop.set()
            await asyncio.wait_for(sending, 60)
        assert during > BATCH  # events were accepted while Postgres was frozen

        await assert_stored_once(pool, accepted, within=90, what="every accepted event stored after SIGCONT")
        for consumer in (persister.telemetry, persister.violations):
            assert consumer.dead_lettered == 0
        assert persister.telemetry.outages >= 1
        ids = await stored_ids(nats_url)
        assert len(ids) == len(set(ids)) == len(accepted)  # in the stream once each, too

        # The service kept running: ready again, and a new event is stored.
        async def ready_again() -> bool:
            return (await api.anon.get("/readyz", timeout=30)).status_code == 200

        await eventually(ready_again, within=30, what="/readyz 200 again")
        await post(10_000)
        await assert_stored_once(pool, accepted, within=30, what="an event posted after the freeze stored")

    records = [r for r in caplog.records if r.name == "llmscope.bus.consumer"]
    assert [r for r in records if "store unavailable" in r.getMessage()]
    assert [r for r in records if "store available again" in r.getMessage()]
    assert not [r for r in records if r.exc_info]  # no traceback per failed try
    assert not [r for r in records if "dead-lettered" in r.getMessage()]
