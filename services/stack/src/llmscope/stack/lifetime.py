"""Children that never outlive ``llmscope up``.

Each child of ``up`` runs in its own session (Ctrl-C in the terminal reaches only the supervisor,
which then stops them in order), so a killed supervisor (SIGKILL, the OOM killer, a closed
terminal) would leave them running and holding their ports. On Linux each child therefore asks
the kernel for a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): when ``up`` dies, however it
dies, every child gets its ordinary stop signal.

The kernel sends it when the *thread* that forked the child exits: ``up`` starts and restarts
every child from its main thread.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Loaded before the fork: the child only calls into an already loaded library.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        # Runs after Popen's setuid/setgid (the kernel clears the setting on a credential
        # change), just before exec.
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec
