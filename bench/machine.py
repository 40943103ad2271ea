"""The machine a benchmark ran on, printed the same way by every benchmark before its figures.

A figure from a shared machine means little without the processor, the cores this process may use
and the load beside it, so each script prints them first (and JSON records keep them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path


def cpu_model() -> str:
    """The processor's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def nats_server_version() -> str:
    """The bundled nats-server's own ``--version`` (the binary the benchmarks start)."""
    from llmscope.stack.embedded import nats_server_binary

    try:
        out = subprocess.run(
            [str(nats_server_binary()), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return out.stdout.strip().removeprefix("nats-server: ") or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def facts(libraries: Sequence[str] = (), *, nats_server: bool = False) -> dict[str, str]:
    """What :func:`print_machine` prints, as a record: ``libraries`` are distribution names, each
    with its installed version (those not installed are left out)."""
    versions = [f"{d} {v}" for d in libraries if (v := _version(d)) is not None]
    if nats_server:
        versions.append(f"nats-server {nats_server_version()}")
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} online, {usable_cores()} usable by this process",
        "ram": f"{ram_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        **({"libraries": ", ".join(versions)} if versions else {}),
        "load average": f"{load_average()} (other jobs share the machine)",
    }


def print_machine(libraries: Sequence[str] = (), *, nats_server: bool = False) -> None:
    """Print ``== machine`` and one line per fact."""
    print("== machine")
    for label, value in facts(libraries, nats_server=nats_server).items():
        print(f"{label:<12} {value}")


def one_line() -> str:
    """The machine in one line, for a script that prints it before and after its run."""
    return f"{usable_cores()} cores, {cpu_model()!r}, load average {os.getloadavg()[0]:.2f}"
