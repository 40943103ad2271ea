"""``llmscope sim``: run the simulated LLM endpoint, or steer a running one.

    llmscope sim serve [--host H] [--port P] [--seed N] [--time-scale X] [--models SPEC ...]
    llmscope sim inject shift   --model M [--factor 2] [--duration S]
    llmscope sim inject spike   --model M [--factor 5] [--count 1]
    llmscope sim inject drift   --model M [--factor 2] [--ramp 60] [--duration S]
    llmscope sim inject outage  --model M [--status 500 | --mode hang|empty|garbage|truncate] [--rate 1]
    llmscope sim inject cascade --host H [--factor 3] [--duration S]
    llmscope sim inject clear   [--id N]
    llmscope sim state

Every ``inject`` takes ``--url`` (default LLMSCOPE_SIM_URL) and ``--model`` or ``--host`` (none:
every model). Before injecting it asks the LLMscope API (LLMSCOPE_SIM_API_URL) whether the charts
it disturbs have armed, and warns, naming those still collecting their baseline
(:mod:`llmscope.simulator.baseline_check`). Settings and their variables are in
:mod:`llmscope.simulator.settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

from llmscope.config.env import ConfigError, Env, config_exit
from llmscope.config.envhelp import environment_help
from llmscope.config.logs import get_logger, setup_logging
from llmscope.simulator.anomalies import OUTAGE_MODES, InjectRequest
from llmscope.simulator.baseline_check import CheckSkipped, api_settings, charts_collecting, warning
from llmscope.simulator.client import SimClient, SimControlError
from llmscope.simulator.engine import Simulator
from llmscope.simulator.server import SimServer
from llmscope.simulator.settings import SimSettings, parse_models, sim_url
from llmscope.simulator.traffic import TrafficGenerator

log = get_logger("llmscope.simulator")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmscope sim", description="The simulated LLM endpoint.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the Ollama, OpenAI and Anthropic APIs",
        description="Serve simulated LLMs on the Ollama, OpenAI and Anthropic APIs. Flags override "
        "the environment; exits 0 on SIGINT/SIGTERM.",
        epilog=environment_help(SimSettings.__module__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="listen address (LLMSCOPE_SIM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (LLMSCOPE_SIM_PORT, default 11500)")
    serve.add_argument("--seed", type=int, help="random seed (LLMSCOPE_SIM_SEED)")
    serve.add_argument("--time-scale", type=_positive, help="duration multiplier (LLMSCOPE_SIM_TIME_SCALE)")
    serve.add_argument(
        "--models", nargs="+", metavar="SPEC", help="NAME@HOST[;key=value...] (LLMSCOPE_SIM_MODELS)"
    )
    serve.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    state = commands.add_parser("state", help="print the running simulator's state")
    state.add_argument("--url", help="simulator URL (LLMSCOPE_SIM_URL)")

    inject = commands.add_parser("inject", help="inject an anomaly into a running simulator")
    kinds = inject.add_subparsers(dest="kind", required=True)

    def kind(
        name: str, help_text: str, *, factor: float | None, duration: bool = True
    ) -> argparse.ArgumentParser:
        sub = kinds.add_parser(name, help=help_text)
        sub.add_argument("--url", help="simulator URL (LLMSCOPE_SIM_URL)")
        sub.add_argument("--model", help="only this model")
        sub.add_argument("--host", help="only models on this simulated host", required=name == "cascade")
        if factor is not None:
            sub.add_argument(
                "--factor", type=_positive, default=factor, help=f"slowdown factor (default {factor})"
            )
        if duration:
            sub.add_argument(
                "--duration", type=_positive, help="seconds until it ends by itself (default: never)"
            )
        return sub

    kind("shift", "a level shift: latency times FACTOR", factor=2.0)
    spike = kind("spike", "the next COUNT requests are FACTOR times slower", factor=5.0, duration=False)
    spike.add_argument("--count", type=int, default=1)
    drift = kind("drift", "latency grows from 1x to FACTOR over RAMP seconds", factor=2.0)
    drift.add_argument("--ramp", type=_positive, default=60.0, help="seconds to reach FACTOR (default 60)")
    outage = kind("outage", "requests fail", factor=None)
    outage.add_argument("--status", type=int, default=500, help="HTTP status for mode error (default 500)")
    outage.add_argument(
        "--mode", choices=OUTAGE_MODES, default="error", help="error, hang, empty, garbage or truncate"
    )
    outage.add_argument("--rate", type=float, default=1.0, help="share of requests that fail (default 1)")
    kind("cascade", "every model on HOST slows down together", factor=3.0)
    clear = kinds.add_parser("clear", help="clear anomalies")
    clear.add_argument("--url", help="simulator URL (LLMSCOPE_SIM_URL)")
    clear.add_argument("--id", type=int, help="only this anomaly")
    return parser


def _settings(args: argparse.Namespace, env: Env) -> SimSettings:
    settings = SimSettings.from_env(env)
    if args.host is not None:
        settings = replace(settings, host=args.host)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    if args.time_scale is not None:
        settings = replace(settings, time_scale=args.time_scale)
    if args.models:
        settings = replace(settings, models=parse_models(args.models, "--models"))
    if args.log_level is not None:
        settings = replace(settings, log_level=args.log_level)
    return settings


async def serve(settings: SimSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulator = Simulator(settings.models, seed=settings.seed, time_scale=settings.time_scale)
    server = SimServer(simulator, settings.host, settings.port)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
            "set LLMSCOPE_SIM_PORT or --port to a free port"
        ) from None
    log.info(
        "simulated LLM endpoint serving",
        url=server.url,
        models=",".join(m.name for m in settings.models),
        seed=settings.seed,
        time_scale=settings.time_scale,
    )
    traffic = None
    if settings.traffic.rps > 0:
        generator = TrafficGenerator(
            settings.traffic, server.url, settings.models, rng=random.Random(settings.seed)
        )
        traffic = asyncio.create_task(generator.run(stop))
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if traffic is not None:
            await traffic  # its last spans are exported before the endpoint goes
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _control(args: argparse.Namespace, env: Env) -> dict[str, object]:
    client = SimClient(args.url or sim_url(env))
    if args.command == "state":
        return await client.state()
    if args.kind == "clear":
        return {"cleared": await client.clear(args.id)}
    await _warn_if_collecting(args, env)
    request = InjectRequest(
        kind=args.kind,
        model=args.model,
        host=args.host,
        factor=getattr(args, "factor", None),
        duration_s=getattr(args, "duration", None),
        ramp_s=getattr(args, "ramp", 60.0),
        count=getattr(args, "count", 1),
        status=getattr(args, "status", 500),
        mode=getattr(args, "mode", "error"),
        rate=getattr(args, "rate", 1.0),
    )
    return {"anomaly": await client.inject(request)}


async def _warn_if_collecting(args: argparse.Namespace, env: Env) -> None:
    """Before an inject: charts still collecting their baseline would take the anomaly into it.
    Said on stderr, naming them; the inject goes on (a demo of that is legitimate)."""
    url, key = await asyncio.to_thread(api_settings, env)  # may read LLMSCOPE_DATA_DIR/api_key
    what = f"model {args.model}" if args.model else f"host {args.host}" if args.host else "every model"
    try:
        charts = await charts_collecting(url, key, model=args.model, host=args.host)
    except CheckSkipped as exc:
        print(
            f"llmscope sim: note: not checked whether the charts of {what} have armed: {exc}", file=sys.stderr
        )
        return
    if charts:
        print(f"llmscope sim: {warning(charts, what)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = env or Env()
    try:
        if args.command == "serve":
            settings = _settings(args, env)
            setup_logging("sim", settings.log_level)
            asyncio.run(serve(settings))
            return 0
        result = asyncio.run(_control(args, env))
    except ConfigError as exc:
        return config_exit("sim", exc)
    except SimControlError as exc:
        print(f"llmscope sim: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
