"""Each service's Prometheus registry: its own (no module-level singletons), with what every
LLMscope process exports under the same names.

``llmscope_build_info{service, version, python}`` is 1 (join it to any series by ``pod`` or
``instance`` to see which build produced it); the client library's ``process_*`` and
``python_*`` collectors say how much CPU and memory the process uses.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector


def package_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def service_registry(service: str, distribution: str | None = None) -> CollectorRegistry:
    """A fresh registry for ``service``, with build info and process metrics already in it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        "llmscope_build_info",
        "Always 1: which LLMscope service and version this process is",
        ["service", "version", "python"],
        registry=registry,
    )
    info.labels(
        service, package_version(distribution or f"llmscope-{service}"), platform.python_version()
    ).set(1)
    return registry
