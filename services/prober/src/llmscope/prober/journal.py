"""The outbox's file: what was probed but not yet published survives a kill of the prober.

An append-only journal of lines ``<subject>\\t<event JSON>`` (put) and ``-\\t<event id>`` (done:
published or dropped). At start the events put and not done are read back in order and the file
is rewritten with only them; while the outbox is empty the file is cut to nothing. A line cut
short by a kill mid-write is skipped. Re-publishing an event that reached JetStream just before
a kill is harmless: the publisher sets ``Nats-Msg-Id`` to the event id and the stream drops the
duplicate within its duplicate window.

Each line is written straight to the kernel (no user-space buffer) when it is put: once
:meth:`Journal.put` returns, it survives a kill of the process (SIGKILL, an OOM kill). A write of
one line to the page cache takes microseconds, so it is done on the event loop. Surviving a crash
of the machine needs fsync, which can take milliseconds to seconds: it runs in a thread, one for
all the lines written since the last one began, so a burst of probes costs one or two fsyncs, and
an event put is on disk at most one fsync later. The rewrite at start is fsynced before it
replaces the file, and the directory after (the file's name is only durable with it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from llmscope.config.logs import get_logger
from llmscope.proto import codec
from llmscope.proto.base import Event

log = get_logger("llmscope.prober.journal")

_DONE = "-"


class Journal:
    """One prober's outbox file (``outbox-<prober id>.jsonl`` in its directory)."""

    def __init__(self, directory: Path, prober_id: str) -> None:
        self.directory = directory
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prober_id) or "prober"
        self.path = directory / f"outbox-{safe}.jsonl"
        self._fd: int | None = None
        self._live = 0
        self._dirty = False
        self._syncing: asyncio.Task[None] | None = None
        self._sync_failed = False
        self.syncs = 0
        """fsyncs of the file since load (one per batch of writes)."""

    def load(self) -> list[tuple[str, Event]]:
        """The events put and not done, oldest first; the file is rewritten with only them.

        Blocking (reads, writes and fsyncs the file): call it in a thread from async code."""
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)
        pending: dict[str, tuple[str, Event]] = {}
        skipped = 0
        try:
            lines = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            if not line:
                continue
            subject, _, body = line.decode("utf-8", "replace").partition("\t")
            if subject == _DONE:
                pending.pop(body, None)
                continue
            try:
                event = codec.decode(body.encode())
            except codec.DecodeError:
                skipped += 1  # the last line, cut short by a kill mid-write
                continue
            pending[event.id] = (subject, event)
        kept = list(pending.values())
        tmp = self.path.with_suffix(".tmp")
        # Owner-only, as the rest of the data directory: telemetry may carry prompt text.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"".join(_put_line(s, e) for s, e in kept))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._live = len(kept)
        if kept or skipped:
            log.info("outbox read back from its file", events=len(kept), unreadable_lines=skipped)
        return kept

    def put(self, subject: str, event: Event) -> None:
        self._write(_put_line(subject, event))
        self._live += 1

    def done(self, event_id: str) -> None:
        self._live -= 1
        if self._live <= 0 and self._fd is not None:
            # Nothing pending: start the file over rather than let it grow for ever.
            os.ftruncate(self._fd, 0)
            self._live = 0
            self._sync_later()
            return
        self._write(f"{_DONE}\t{event_id}\n".encode())

    async def synced(self) -> None:
        """Returns once everything written so far is on disk (or its fsync failed, logged)."""
        while self._syncing is not None and not self._syncing.done():
            await asyncio.shield(self._syncing)

    async def aclose(self) -> None:
        """The last fsync, then the file is closed."""
        try:
            await self.synced()
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError("Journal.load() first")
        _write_all(self._fd, data)
        self._sync_later()

    def _sync_later(self) -> None:
        self._dirty = True
        if self._syncing is not None and not self._syncing.done():
            return  # the running fsync loop sees _dirty and goes round once more
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside any event loop (a script, a sync test): fsync now
            self._fsync_now()
            return
        self._syncing = loop.create_task(self._sync(), name="outbox-fsync")

    async def _sync(self) -> None:
        while self._dirty and self._fd is not None:
            self._dirty = False
            # The thread fsyncs its own duplicate of the descriptor: a close() meanwhile cannot
            # hand the number to another file under it.
            dup = os.dup(self._fd)
            try:
                await asyncio.to_thread(_fsync_and_close, dup)
            except OSError as exc:
                if not self._sync_failed:  # once: a failing disk must not flood the log too
                    log.error("outbox file fsync failed", path=str(self.path), error=str(exc))
                self._sync_failed = True
                return
            self.syncs += 1

    def _fsync_now(self) -> None:
        if self._fd is not None:
            self._dirty = False
            os.fsync(self._fd)
            self.syncs += 1


def _put_line(subject: str, event: Event) -> bytes:
    return subject.encode() + b"\t" + codec.encode(event) + b"\n"


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
