"""Host metrics for each probe: CPU and memory from psutil, GPU from NVML when there is one.

Sampling runs in an executor so a slow driver call never blocks the event loop. Without a GPU
(no driver, no library, no device) the GPU fields are null; NVML is initialised once and a
failure is logged once, never raised.

The metrics describe the prober's host. They describe the target's host too only when the
target runs there: :func:`system_scope` says so for a loopback URL, ``localhost``, or the
prober's own host name or interface address (compared as written: no DNS lookups).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import socket
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psutil

from llmscope.config.logs import get_logger
from llmscope.proto.telemetry import SystemMetrics, SystemScope

log = get_logger("llmscope.prober.sysmetrics")


def _load_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _clamp(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


class SystemSampler:
    """Samples host metrics; ``nvml`` is the pynvml module (None: no GPU support at all)."""

    def __init__(self, nvml: Any | None = None, *, load_nvml: bool = True) -> None:
        self._nvml = nvml if nvml is not None else (_load_pynvml() if load_nvml else None)
        self._handles: list[Any] | None = None
        self._gpu_disabled = self._nvml is None
        self._sample_error_logged = False
        self._lock = threading.Lock()
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    @property
    def gpu_available(self) -> bool:
        return not self._gpu_disabled and bool(self._handles)

    def _init_gpu(self) -> None:
        nvml = self._nvml
        assert nvml is not None
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError, missing driver (OSError), anything: no GPU then
            self._gpu_disabled = True
            log.info("no GPU metrics: NVML is not usable", reason=repr(exc)[:200])
            return
        if not self._handles:
            self._gpu_disabled = True
            log.info("no GPU metrics: NVML sees no device")
        else:
            log.info("GPU metrics enabled", devices=len(self._handles))

    def _gpu(self) -> tuple[float | None, float | None]:
        if not self._gpu_disabled and self._handles is None:
            self._init_gpu()
        handles, nvml = self._handles, self._nvml
        if self._gpu_disabled or not handles or nvml is None:
            return None, None
        try:
            utils = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
            memory = [nvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
        except Exception as exc:
            if not self._sample_error_logged:
                self._sample_error_logged = True
                log.warning("GPU sample failed; GPU fields are null", reason=repr(exc)[:200])
            return None, None
        total = sum(m.total for m in memory)
        used = sum(m.used for m in memory)
        return _clamp(sum(utils) / len(utils)), (_clamp(100.0 * used / total) if total else None)

    def sample_sync(self) -> SystemMetrics:
        with self._lock:  # executor threads may overlap; NVML handles are shared
            gpu_percent, gpu_memory_percent = self._gpu()
            return SystemMetrics(
                cpu_percent=_clamp(psutil.cpu_percent(interval=None)),
                memory_percent=_clamp(psutil.virtual_memory().percent),
                gpu_percent=gpu_percent,
                gpu_memory_percent=gpu_memory_percent,
            )

    async def sample(self) -> SystemMetrics:
        return await asyncio.get_running_loop().run_in_executor(None, self.sample_sync)

    def close(self) -> None:
        if self._nvml is not None and self._handles:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed")
            self._handles = None


def local_names() -> frozenset[str]:
    """This host's name and interface addresses, lower case (no DNS lookup, so quick)."""
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        for addresses in psutil.net_if_addrs().values():
            # IPv6 link-local addresses carry a zone ("fe80::1%eth0"); URLs rarely do.
            names.update(a.address.split("%")[0].lower() for a in addresses if a.address)
    names.discard("")
    return frozenset(names)


def system_scope(base_url: str, names: Iterable[str]) -> SystemScope:
    """``target`` when ``base_url`` points at this host (so host metrics are its too), else ``prober``."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "target"
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if ip.is_loopback or ip.is_unspecified:
            return "target"
    for name in names:
        # A short host name also matches its qualified forms ("gpu1" and "gpu1.lan").
        if host == name or (name and not name.replace(".", "").isdigit() and host.startswith(name + ".")):
            return "target"
    return "prober"
