"""Command-line output whose reader went away (``llmscope ... | head``): end as quietly as a
program that SIGPIPE ended (Python ignores SIGPIPE and raises BrokenPipeError instead)."""

from __future__ import annotations

import os
import sys

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a program that a closed pipe ended."""


def discard_stdout() -> None:
    """Point stdout at devnull, so the interpreter's flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (an in-process caller)
        pass
