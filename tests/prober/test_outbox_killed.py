"""The prober's outbox kept in a file (LLMSCOPE_PROBER_OUTBOX_DIR): a prober killed with SIGKILL
while NATS is away loses nothing it had probed; the next one publishes it, each event once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llmscope.prober.journal import Journal
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.proto import codec, subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.api.faults import stored_ids
from tests.simulator.harness import running_sim

ROOT = Path(__file__).resolve().parents[2]


def _event(n: int) -> TelemetryEvent:
    return TelemetryEvent(
        id=new_id(), ts=utcnow(), provider="ollama", model="m", target="t", prompt_id=f"p{n}", prompt_hash="h"
    )


def _journaled_ids(path: Path) -> list[str]:
    """Ids of the whole put lines in the journal (a line being written may be cut short)."""
    ids = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        subject, _, body = line.partition(b"\t")
        if subject != b"-":
            ids.append(codec.decode_as(body, TelemetryEvent).id)
    return ids


def test_the_journal_gives_back_what_was_put_and_not_done(tmp_path: Path) -> None:
    subject = subjects.telemetry("ollama", "m")
    events = [_event(n) for n in range(5)]
    journal = Journal(tmp_path, "p/1")
    assert journal.load() == []
    for event in events:
        journal.put(subject, event)
    journal.done(events[1].id)
    journal.done(events[3].id)
    journal.close()
    with journal.path.open("ab") as f:
        f.write(b'telemetry.x\t{"type":"telemetry.v1","id":')  # a kill mid-write
    again = Journal(tmp_path, "p/1")
    assert again.load() == [(subject, events[i]) for i in (0, 2, 4)]
    # ... and the file now holds just those, ready for more.
    assert _journaled_ids(again.path) == [events[i].id for i in (0, 2, 4)]
    assert again.path.stat().st_mode & 0o077 == 0  # owner only
    for i in (0, 2, 4):
        again.done(events[i].id)
    assert again.path.stat().st_size == 0  # nothing pending: the file starts over
    again.close()


async def test_an_outbox_over_its_size_drops_the_oldest_from_the_file_too(tmp_path: Path) -> None:
    subject = subjects.telemetry("ollama", "m")
    metrics = ProberMetrics(CollectorRegistry())
    journal = Journal(tmp_path, "p")
    outbox = Outbox(None, metrics, maxsize=3, journal=journal)
    assert await outbox.recover() == 0
    events = [_event(n) for n in range(5)]
    for event in events:
        outbox.put(subject, event)
    assert outbox.dropped == 2
    await journal.aclose()
    reborn = Outbox(None, metrics, maxsize=3, journal=Journal(tmp_path, "p"))
    assert await reborn.recover() == 3
    assert len(reborn) == 3


async def test_the_file_is_fsynced_once_per_batch_of_writes_off_the_event_loop(tmp_path: Path) -> None:
    subject = subjects.telemetry("ollama", "m")
    journal = Journal(tmp_path / "new" / "dir", "p")
    await asyncio.to_thread(journal.load)
    assert journal.directory.stat().st_mode & 0o077 == 0
    events = [_event(n) for n in range(200)]
    for event in events:  # one burst: the loop never yields between these writes
        journal.put(subject, event)
    await journal.synced()
    # One fsync for the burst (a second at most, had a write come after the first one began);
    # one per line would be 200.
    assert 1 <= journal.syncs <= 2, journal.syncs
    before = journal.syncs
    journal.done(events[0].id)
    await journal.synced()
    assert journal.syncs == before + 1
    await journal.aclose()
    assert [e.id for _, e in Journal(journal.directory, "p").load()] == [e.id for e in events[1:]]


# A prober's outbox in miniature: puts events one at a time on an event loop and says so on
# stdout once each put has returned, then waits to be killed.
_PUTTER = """
import asyncio, sys
from pathlib import Path
from llmscope.prober.journal import Journal
from tests.prober.test_outbox_killed import _event
from llmscope.proto import subjects

async def main() -> None:
    journal = Journal(Path(sys.argv[1]), "k")
    await asyncio.to_thread(journal.load)
    for n in range(int(sys.argv[2])):
        event = _event(n)
        journal.put(subjects.telemetry("ollama", "m"), event)
        print(event.id, flush=True)
        await asyncio.sleep(0)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.fault
async def test_an_event_put_survives_a_sigkill_right_after_the_put_returns(tmp_path: Path) -> None:
    # (fsync itself only shows in a power cut: this is the kill of the process, the common case.)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PUTTER, str(tmp_path), "50", stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    put: list[str] = []
    try:
        while len(put) < 50:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the putter ended early"
            put.append(line.decode().strip())
        proc.send_signal(signal.SIGKILL)  # at once: no chance to close or flush anything
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [e.id for _, e in Journal(tmp_path, "k").load()] == put


@pytest.mark.fault
async def test_sigkill_while_nats_is_away_loses_nothing_probed(
    embedded_nats: EmbeddedNats, tmp_path: Path
) -> None:
    outbox_dir = tmp_path / "outbox"
    async with running_sim() as sim:
        env = {
            **os.environ,
            "NATS_URL": embedded_nats.url,
            "LLMSCOPE_TARGETS": f"ollama,{sim.url},fast-a:1b",
            "LLMSCOPE_PROBER_INTERVAL_S": "0.05",
            "LLMSCOPE_PROBER_HEALTH_PORT": "0",
            "LLMSCOPE_PROBER_ID": "killed-prober",
            "LLMSCOPE_PROBER_OUTBOX_DIR": str(outbox_dir),
        }
        journal = outbox_dir / "outbox-killed-prober.jsonl"
        log = (tmp_path / "prober.log").open("ab")
        await asyncio.to_thread(embedded_nats.stop)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.prober", env=env, stdout=log, stderr=log
        )
        try:
            # Probing goes on with NATS away; the outbox's file fills.
            await eventually(
                lambda: journal.exists() and len(_journaled_ids(journal)) >= 10,
                within=30,
                what="ten probes in the outbox's file",
            )
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            probed = _journaled_ids(journal)  # what the dead prober had probed, none published
            assert len(probed) >= 10
            await asyncio.to_thread(embedded_nats.start)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmscope.prober", env=env, stdout=log, stderr=log
            )

            async def all_published() -> bool:
                return set(probed) <= set(await stored_ids(embedded_nats.url))

            await eventually(all_published, within=60, what="the dead prober's probes published")
            ids = await stored_ids(embedded_nats.url)
            assert len(ids) == len(set(ids)), "an event published twice"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
    assert "outbox read back from its file" in (tmp_path / "prober.log").read_text()
