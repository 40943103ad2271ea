"""``llmscope spc rebaseline``: ask the running SPC engine to re-baseline a chart, or list charts.

    llmscope spc rebaseline --chart KEY --by WHO --reason WHY [--nats-url URL] [--timeout S]
    llmscope spc rebaseline --model PROVIDER/MODEL [--target T] --by WHO --reason WHY [...]
    llmscope spc rebaseline --list [--nats-url URL]

The request goes to ``subjects.spc_rebaseline()``; the replica owning the chart answers and the
reply is printed as JSON. ``--model`` re-baselines every chart of the model (all prompts and
metrics, and availability; ``--target`` only that target's) in one request on
``subjects.spc_rebaseline_model()``; the reply lists the charts. ``--list`` prints one JSON line
per chart in the engine's KV bucket (key, phase, progress, baseline_n). Exit codes: 0 done, 1
the engine refused (e.g. no such chart), 2 usage, 3 no engine answered (or NATS is
unreachable), 141 when the reader of stdout went away early (``| head``), quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import msgspec
from nats.errors import NoRespondersError, NoServersError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

from llmscope.bus.connection import connect
from llmscope.bus.kv import bucket_keys
from llmscope.bus.settings import DEFAULT_NATS_URL
from llmscope.config.env import redact_url
from llmscope.config.stdout import EXIT_BROKEN_PIPE, discard_stdout
from llmscope.proto import subjects
from llmscope.proto.charts import (
    ModelRebaselineReply,
    ModelRebaselineRequest,
    RebaselineReply,
    RebaselineRequest,
    decode_record,
    is_chart_key,
)

OK, REFUSED, USAGE, NO_ENGINE = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmscope spc rebaseline",
        description="Re-baseline one SPC chart or every chart of a model (who and why are recorded),"
        " or list the charts.",
    )
    p.add_argument("--chart", metavar="KEY", help="chart key, as in a violation's chart_key")
    p.add_argument(
        "--model",
        metavar="PROVIDER/MODEL",
        help="every chart of this model: all prompts and metrics, and availability",
    )
    p.add_argument("--target", metavar="T", default="", help="with --model: only this target's charts")
    p.add_argument("--by", metavar="WHO", help="who asks (recorded in the new baseline)")
    p.add_argument("--reason", metavar="WHY", help="why (recorded in the new baseline)")
    p.add_argument("--list", action="store_true", help="print the engine's charts as JSON lines")
    p.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL") or DEFAULT_NATS_URL,
        help="NATS server (default: $NATS_URL or %(default)s)",
    )
    p.add_argument(
        "--bucket",
        default=os.environ.get("LLMSCOPE_SPC_CHARTS_BUCKET") or subjects.SPC_CHARTS_BUCKET,
        help="KV bucket of the charts (default: %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the engine (default 5)")
    return p


def _print(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


async def _rebaseline(url: str, key: str, by: str, reason: str, wait_s: float) -> int:
    nc = await connect(url, "llmscope-spc-rebaseline", give_up_after=wait_s)
    try:
        body = msgspec.json.encode(RebaselineRequest(chart_key=key, by=by, reason=reason))
        try:
            msg = await nc.request(subjects.spc_rebaseline(), body, timeout=wait_s)
        except (NoRespondersError, TimeoutError):
            print(f"llmscope spc rebaseline: no SPC engine answered within {wait_s:g} s", file=sys.stderr)
            return NO_ENGINE
        reply = msgspec.json.decode(msg.data, type=RebaselineReply)
        _print(reply)
        return OK if reply.ok else REFUSED
    finally:
        await nc.close()


async def _rebaseline_model(url: str, request: ModelRebaselineRequest, wait_s: float) -> int:
    nc = await connect(url, "llmscope-spc-rebaseline", give_up_after=wait_s)
    try:
        try:
            msg = await nc.request(
                subjects.spc_rebaseline_model(), msgspec.json.encode(request), timeout=wait_s
            )
        except (NoRespondersError, TimeoutError):
            print(f"llmscope spc rebaseline: no SPC engine answered within {wait_s:g} s", file=sys.stderr)
            return NO_ENGINE
        reply = msgspec.json.decode(msg.data, type=ModelRebaselineReply)
        _print(reply)
        return OK if reply.ok else REFUSED
    finally:
        await nc.close()


def _usage(p: argparse.ArgumentParser, problem: str) -> int:
    p.print_usage(sys.stderr)
    print(f"llmscope spc rebaseline: {problem}", file=sys.stderr)
    return USAGE


async def _list(url: str, bucket: str, wait_s: float) -> int:
    nc = await connect(url, "llmscope-spc-rebaseline", give_up_after=wait_s)
    try:
        try:
            js = nc.jetstream()
            kv = await js.key_value(bucket)
            keys = [k for k in await bucket_keys(js, bucket) if is_chart_key(k)]
        except (BucketNotFoundError, NoKeysError):
            return OK  # no engine has written a chart yet
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            record = decode_record(entry.value or b"{}")
            view = record.view or record.availability
            _print(
                {
                    "key": key,
                    "metric": record.meta.metric,
                    "phase": view.phase if view is not None else None,
                    "progress": view.progress if view is not None else None,
                    "baseline_n": view.baseline_n if view is not None else None,
                }
            )
        return OK
    finally:
        await nc.close()


def _main_model(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.chart:
        return _usage(p, "--chart and --model: one or the other")
    provider, _, model = args.model.strip().partition("/")
    if not provider or not model.strip():
        return _usage(p, f"--model: PROVIDER/MODEL, e.g. ollama/llama3.1:8b (got {args.model!r})")
    given = {name: (getattr(args, name) or "").strip() for name in ("by", "reason")}
    missing = [f"--{name}" for name, value in given.items() if not value]
    if missing:
        return _usage(p, f"missing {', '.join(missing)}")
    request = ModelRebaselineRequest(
        provider=provider,
        model=model.strip(),
        target=args.target.strip(),
        by=given["by"],
        reason=given["reason"],
    )
    return asyncio.run(_rebaseline_model(args.nats_url, request, args.timeout))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 after --help
        return int(exc.code or 0)
    try:
        if args.list:
            return asyncio.run(_list(args.nats_url, args.bucket, args.timeout))
        if args.model is not None:
            return _main_model(p, args)
        if args.target:
            return _usage(p, "--target goes with --model")
        given = {name: (getattr(args, name) or "").strip() for name in ("chart", "by", "reason")}
        missing = [f"--{name}" for name, value in given.items() if not value]
        if missing:
            return _usage(p, f"missing {', '.join(missing)} (or use --model or --list)")
        if not is_chart_key(given["chart"]):
            print(f"llmscope spc rebaseline: not a chart key: {given['chart']!r}", file=sys.stderr)
            return USAGE
        return asyncio.run(
            _rebaseline(args.nats_url, given["chart"], given["by"], given["reason"], args.timeout)
        )
    except BrokenPipeError:
        # `--list | head -1`: the reader has what it wanted. End quietly, as `spc analyze` does;
        # this is no NATS problem, so it must not reach the handler below.
        discard_stdout()
        return EXIT_BROKEN_PIPE
    except (NoServersError, OSError) as exc:
        print(
            f"llmscope spc rebaseline: cannot reach NATS at {redact_url(args.nats_url)}: {exc}",
            file=sys.stderr,
        )
        return NO_ENGINE


if __name__ == "__main__":
    sys.exit(main())
