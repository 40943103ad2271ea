"""The event loop a service runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop is optional (the ``llmscope-stack`` package, and so the image, installs it; a service
installed alone runs without it). The API gets it through uvicorn's own loop choice; the other
services through :func:`run`. ``make bench`` measures what it changes (``bench/spc_bench.py``
section (b) runs on both loops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]


def loop_factory(name: LoopName = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when asked for (or, with ``auto``, when installed); None: asyncio's."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], loop: LoopName = "auto") -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` chooses."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
