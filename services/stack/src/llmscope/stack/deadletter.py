"""``llmscope deadletter``: list, inspect and replay the messages no service could take.

    llmscope deadletter list [FILTERS] [--json] [--nats-url URL]
    llmscope deadletter show SEQ [--json] [--nats-url URL]
    llmscope deadletter replay (SEQ ... | --all | FILTERS) [--dry-run] [--nats-url URL]

Dead letters live in the ``LLMSCOPE_DEADLETTER`` stream (``deadletter.v1``: the original bytes,
subject, reason and ``Nats-Msg-Id``); SEQ is a dead letter's sequence in that stream, as ``list``
prints it. FILTERS select by the original subject (NATS wildcards ``*`` and ``>``), a text in the
reason (case-insensitive), the dead-lettering service and a time (``--since 2h`` or an ISO time).

``replay`` publishes each original back to its subject (telemetry to the subject a prober
publishes to, so it is partitioned again) with its original ``Nats-Msg-Id``, waits for
JetStream's ack, then deletes the dead letter from its stream: a second replay finds nothing to
resend, and a replay cut short between the two steps is de-duplicated by the stream (and stored
once anyway: every consumer writes idempotently by event id). While the poisoned original itself
is still inside its stream's duplicate window the stream would drop the replay as its duplicate;
the replay then goes out under ``<msg id>.replay``, again one id per original. Replay after the
cause is fixed; a message that fails again is dead-lettered again, with the new reason.

Exit codes: 0 done, 1 some replay failed or no such dead letter, 2 usage, 3 NATS unreachable,
141 when the reader of stdout went away early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from llmscope.bus.connection import connect
from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.bus.settings import DEFAULT_NATS_URL
from llmscope.config.stdout import EXIT_BROKEN_PIPE, discard_stdout
from llmscope.proto import codec, subjects
from llmscope.proto.deadletter import DeadLetterEvent

OK, FAILED, USAGE, NO_NATS = 0, 1, 2, 3
REPLAY_SUFFIX = ".replay"
NO_MESSAGE_FOUND = 10057  # JetStream's error code for a stream message that is not there


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as stored: its sequence in the dead-letter stream and what it holds."""

    seq: int
    time: datetime
    headers: dict[str, str]
    event: DeadLetterEvent

    @property
    def body(self) -> bytes:
        if self.event.payload_encoding == "base64":
            return base64.b64decode(self.event.payload)
        return self.event.payload.encode()

    @property
    def msg_id(self) -> str:
        """The original's Nats-Msg-Id: recorded, else the event id in its body, else ours."""
        if self.event.msg_id:
            return self.event.msg_id
        try:
            found = json.loads(self.body).get("id")
        except (ValueError, AttributeError):
            found = None
        return found if isinstance(found, str) and found else f"deadletter-{self.event.id}"

    @property
    def replay_subject(self) -> str:
        """Where the original goes back to: as published (a stored telemetry subject loses its
        partition token, which the telemetry stream appends again)."""
        subject = self.event.subject
        if subject.startswith(f"{subjects.PREFIX}.telemetry.v1."):
            try:
                return subjects.telemetry(*subjects.parse_telemetry(subject))
            except ValueError:
                return subject
        return subject


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters a command applies to (every one given must match)."""

    seqs: frozenset[int] = frozenset()
    subject: str | None = None
    reason: str | None = None
    source: str | None = None
    since: datetime | None = None

    def match(self, dl: DeadLetter) -> bool:
        if self.seqs and dl.seq not in self.seqs:
            return False
        if self.subject is not None and not subject_matches(self.subject, dl.event.subject):
            return False
        if self.reason is not None and self.reason.lower() not in dl.event.reason.lower():
            return False
        if self.source is not None and dl.event.source != self.source:
            return False
        return self.since is None or dl.time >= self.since


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``90s``, ``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC when it has no zone)."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (2h) or an ISO time: {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def dead_letters(js: JetStreamContext) -> AsyncIterator[DeadLetter]:
    """Every dead letter in the stream, oldest first (one direct get each: dead letters are few)."""
    seq = 1
    while True:
        try:
            raw = await js.get_msg(subjects.STREAM_DEADLETTER, seq=seq, next=True)
        except NotFoundError:
            return
        assert raw.seq is not None
        seq = raw.seq + 1
        try:
            event = codec.decode(raw.data or b"")
        except (codec.DecodeError, ValueError):
            continue  # not one of ours: nothing to replay
        if isinstance(event, DeadLetterEvent):
            time = raw.time if isinstance(raw.time, datetime) else event.ts
            yield DeadLetter(raw.seq, time, dict(raw.headers or {}), event)


async def select(js: JetStreamContext, filters: Filters) -> list[DeadLetter]:
    return [dl async for dl in dead_letters(js) if filters.match(dl)]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What happened to one dead letter's replay."""

    seq: int
    subject: str
    msg_id: str
    outcome: str  # "stored", "already stored" (a duplicate of an earlier replay) or "failed: ..."

    @property
    def ok(self) -> bool:
        return not self.outcome.startswith("failed")


async def replay_one(js: JetStreamContext, publisher: Publisher, dl: DeadLetter) -> Replayed:
    """Publish the original again, then delete the dead letter (see the module docstring)."""
    subject, msg_id = dl.replay_subject, dl.msg_id
    try:
        ack = await publisher.publish_raw(subject, dl.body, msg_id=msg_id)
        if ack.duplicate and _is_the_poisoned_original(ack, dl):
            msg_id = f"{msg_id}{REPLAY_SUFFIX}"
            ack = await publisher.publish_raw(subject, dl.body, msg_id=msg_id)
    except PublishFailed as exc:
        return Replayed(dl.seq, subject, msg_id, f"failed: {exc}")
    try:
        await js.delete_msg(subjects.STREAM_DEADLETTER, dl.seq)
    except APIError as exc:
        # Another replay deleted it after publishing the same id: stored once all the same.
        if exc.err_code != NO_MESSAGE_FOUND:
            return Replayed(dl.seq, subject, msg_id, f"failed: published, but not deleted: {exc}")
    return Replayed(dl.seq, subject, msg_id, "already stored" if ack.duplicate else "stored")


def _is_the_poisoned_original(ack: PubAck, dl: DeadLetter) -> bool:
    # A duplicate ack names the sequence of the message the stream remembers under that id: the
    # very message that was dead-lettered means nothing has been stored under it since.
    return dl.event.stream_seq is not None and ack.seq == dl.event.stream_seq


def summary_line(dl: DeadLetter) -> str:
    reason = " ".join(dl.event.reason.split())
    when = dl.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{dl.seq:>6}  {when}  {dl.event.source:<14}  {len(dl.body):>7}  {dl.event.subject}  {reason[:160]}"
    )


def as_json(dl: DeadLetter, *, full: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "seq": dl.seq,
        "time": dl.time.isoformat(),
        "source": dl.event.source,
        "subject": dl.event.subject,
        "reason": dl.event.reason,
        "size": len(dl.body),
        "msg_id": dl.msg_id,
        "original_seq": dl.event.stream_seq,
    }
    if full:
        out["headers"] = dl.headers
        out["payload_encoding"] = dl.event.payload_encoding
        out["body"] = _body(dl)
    return out


def _body(dl: DeadLetter) -> object:
    try:
        return json.loads(dl.body)
    except ValueError:
        return dl.event.payload


def show_text(dl: DeadLetter) -> str:
    lines = [
        f"seq:          {dl.seq}",
        f"time:         {dl.time.isoformat()}",
        f"source:       {dl.event.source}",
        f"subject:      {dl.event.subject}",
        f"original seq: {dl.event.stream_seq}",
        f"msg id:       {dl.msg_id}",
        f"size:         {len(dl.body)} bytes ({dl.event.payload_encoding})",
        "headers:",
        *(f"  {k}: {v}" for k, v in sorted(dl.headers.items())),
        "reason:",
        *(f"  {line}" for line in dl.event.reason.splitlines()),
        "body:",
    ]
    body = _body(dl)
    lines.append(json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body, str) else body)
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmscope deadletter", description="List, inspect and replay dead letters."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL", DEFAULT_NATS_URL),
        help="NATS server (default: $NATS_URL or %(default)s)",
    )
    commands = p.add_subparsers(dest="command", required=True)

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--subject", help="original subject, NATS wildcards (llmscope.telemetry.v1.>)")
        sub.add_argument("--reason", help="text in the reason (case-insensitive)")
        sub.add_argument("--source", help="the service that dead-lettered it (api-persister, ...)")
        sub.add_argument("--since", type=parse_since, help="dead-lettered since: 2h, 30m, 7d or ISO time")

    listing = commands.add_parser(
        "list", parents=[common], help="one line per dead letter: seq, time, source, size, subject, reason"
    )
    filters(listing)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = commands.add_parser(
        "show", parents=[common], help="one dead letter in full: headers, reason, body"
    )
    show.add_argument("seq", type=int)
    show.add_argument("--json", action="store_true")
    replay = commands.add_parser(
        "replay", parents=[common], help="publish originals back to their subjects, then delete them"
    )
    replay.add_argument("seqs", type=int, nargs="*", metavar="SEQ")
    replay.add_argument(
        "--all", action="store_true", help="every dead letter (or every one the filters match)"
    )
    filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed, send nothing")
    return p


def filters_of(args: argparse.Namespace) -> Filters:
    return Filters(
        seqs=frozenset(getattr(args, "seqs", None) or ()),
        subject=args.subject,
        reason=args.reason,
        source=args.source,
        since=args.since,
    )


async def run(args: argparse.Namespace) -> int:
    try:
        nc = await connect(args.nats_url, "llmscope-deadletter", give_up_after=5.0)
    except (NoServersError, OSError, TimeoutError) as exc:
        print(f"llmscope deadletter: NATS at {args.nats_url} unreachable: {exc}", file=sys.stderr)
        return NO_NATS
    try:
        js = nc.jetstream()
        if args.command == "list":
            for dl in await select(js, filters_of(args)):
                print(json.dumps(as_json(dl, full=False)) if args.json else summary_line(dl))
            return OK
        if args.command == "show":
            found = await select(js, Filters(seqs=frozenset({args.seq})))
            if not found:
                print(f"llmscope deadletter: no dead letter {args.seq}", file=sys.stderr)
                return FAILED
            print(json.dumps(as_json(found[0], full=True), indent=2) if args.json else show_text(found[0]))
            return OK
        return await _replay(js, args)
    finally:
        await nc.close()


async def _replay(js: JetStreamContext, args: argparse.Namespace) -> int:
    chosen = filters_of(args)
    if not (args.all or chosen != Filters()):
        print("llmscope deadletter replay: give SEQ..., filters or --all", file=sys.stderr)
        return USAGE
    found = await select(js, chosen)
    missing = chosen.seqs - {dl.seq for dl in found}
    for seq in sorted(missing):
        print(f"llmscope deadletter: no dead letter {seq}", file=sys.stderr)
    if args.dry_run:
        for dl in found:
            print(f"would replay {dl.seq} -> {dl.replay_subject} (Nats-Msg-Id {dl.msg_id})")
        return FAILED if missing else OK
    publisher = Publisher(js, deadline=10.0)
    results = [await replay_one(js, publisher, dl) for dl in found]
    for r in results:
        print(f"{r.seq} -> {r.subject} (Nats-Msg-Id {r.msg_id}): {r.outcome}")
    stored = sum(r.ok for r in results)
    print(f"replayed {stored} of {len(results)}", file=sys.stderr)
    return FAILED if missing or stored < len(results) else OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except BrokenPipeError:
        discard_stdout()
        return EXIT_BROKEN_PIPE
