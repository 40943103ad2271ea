"""Request/reply subscriptions of a service: each request answered in its own task.

A service that answers requests over core NATS (the alerter's control subjects, the API's
telemetry for pages) subscribes in a queue group, so one of its processes answers each request,
and answers each in a task of its own, so a slow answer (a test send, a query) does not hold up
the next. On stop it unsubscribes first and gives the answers in hand a grace period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmscope.config.logs import get_logger

log = get_logger("llmscope.bus")


class Responders:
    """The subscriptions and the answers in hand of one service's request handlers."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(
        self, nc: NATS, subject: str, queue: str, answer: Callable[[Msg], Coroutine[Any, Any, None]]
    ) -> None:
        """Answer requests on ``subject`` (queue group ``queue``) with ``answer``, each in a task."""

        async def spawn(msg: Msg) -> None:
            task = asyncio.create_task(answer(msg), name=f"request {subject}")
            self._tasks.add(task)  # held here: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

        self._subs.append(await nc.subscribe(subject, queue=queue, cb=spawn))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests; give those in hand ``grace`` seconds to be answered."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closed
                log.debug("unsubscribe failed", subject=sub.subject)
        self._subs.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
