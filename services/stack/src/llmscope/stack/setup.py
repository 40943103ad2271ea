"""``llmscope setup``: create or update every JetStream stream and key-value bucket, then exit.

    llmscope setup [--nats-url URL]

The one step that may create, change or delete streams (``llmscope.bus.layout`` declares them
all). Run it as the ``setup`` NATS user (``NATS_USER=setup``, ``NATS_PASSWORD``) before or while
the services start with ``LLMSCOPE_MANAGE_STREAMS=false``: they wait for it. compose runs it as
the one-shot service ``setup``, Kubernetes as the Job ``llmscope-setup``, ``llmscope up`` before
its services. It is idempotent: run it again after changing a retention setting
(``LLMSCOPE_TELEMETRY_MAX_AGE_H``, ``LLMSCOPE_STREAM_REPLICAS`` …), which takes effect through it
and no longer through a service's restart. It reads the same environment as the services: the
stream variables of ``llmscope.bus.settings`` and, from the SPC engine's,
``LLMSCOPE_SPC_PARTITIONS`` (the telemetry stream's partitions), ``LLMSCOPE_SPC_CHARTS_BUCKET``
and ``LLMSCOPE_SPC_LEASE_TTL_S`` (the members bucket's max age).

Exit codes: 0 done, 1 NATS refused or failed a step, 2 a bad setting or a telemetry stream with
another partition count (fixed for its life), 3 NATS unreachable within ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from llmscope.bus.connection import connect
from llmscope.bus.layout import Layout, apply, layout
from llmscope.bus.streams import PartitionMismatchError
from llmscope.config.env import ConfigError, config_exit, redact_url
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.startup import Stopped, stop_on_signals
from llmscope.spc_engine.membership import MEMBER_TTLS
from llmscope.spc_engine.settings import SpcSettings

OK, FAILED, USAGE, NO_NATS = 0, 1, 2, 3

log = get_logger("llmscope.setup")


def declared(settings: SpcSettings) -> Layout:
    """Every stream and bucket, for the SPC engine's settings (which hold the bus settings)."""
    return layout(
        settings.bus,
        partitions=settings.partitions,
        charts_bucket=settings.charts_bucket,
        state_bucket=settings.state_bucket,
        member_ttl_s=MEMBER_TTLS * settings.lease_ttl_s,
    )


async def run(nats_url: str, wanted: Layout, *, wait_s: float) -> int:
    """Connect (waiting up to ``wait_s`` for NATS), apply ``wanted``, disconnect."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    loop.call_later(wait_s, stop.set)
    try:
        nc = await connect(nats_url, "llmscope-setup", stop=stop)
    except Stopped:
        log.error("NATS did not answer", url=redact_url(nats_url), waited_s=wait_s)
        return NO_NATS
    try:
        js = nc.jetstream()
        try:
            await apply(js, wanted)
        except PartitionMismatchError as exc:
            log.error("cannot set up", error=str(exc))
            return USAGE
        except (NatsTimeoutError, TimeoutError) as exc:
            # A user without the right: nats-server answers nothing and the request times out.
            log.error(
                "a stream or bucket could not be created or updated: no answer",
                error=repr(exc),
                hint="run as the setup user (NATS_USER=setup), whose permissions allow it",
            )
            return FAILED
        except APIError as exc:
            log.error(
                "a stream or bucket could not be created or updated", error=exc.description, code=exc.err_code
            )
            return FAILED
        except NatsError as exc:
            log.error("a stream or bucket could not be created or updated", error=repr(exc))
            return FAILED
        for config in wanted.streams:
            log.info(
                "stream set up", stream=config.name, max_age_s=config.max_age, replicas=config.num_replicas
            )
        for bucket in wanted.buckets:
            log.info("bucket set up", bucket=bucket.bucket, storage=str(bucket.storage), ttl_s=bucket.ttl)
        log.info("setup done", partitions=wanted.partitions)
        return OK
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llmscope setup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nats-url", help="NATS server(s); default NATS_URL (with NATS_USER/NATS_PASSWORD)")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for NATS (default 300)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        settings = SpcSettings.from_env()
    except ConfigError as exc:
        return config_exit("setup", exc)
    setup_logging("setup", settings.log_level)
    url = args.nats_url or settings.bus.nats_url
    return asyncio.run(run(url, declared(settings), wait_s=args.wait))


if __name__ == "__main__":
    sys.exit(main())
