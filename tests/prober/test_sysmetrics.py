"""Host metrics: CPU and memory always, GPU fields null (never a crash) without a usable GPU."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from llmscope.prober.sysmetrics import SystemSampler


class BrokenNvml:
    """Stands in for pynvml on a host without an NVIDIA driver: init fails."""

    def __init__(self) -> None:
        self.init_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        raise OSError("NVML Shared Library Not Found")


class OneGpuNvml:
    """Stands in for pynvml on a host with one GPU (the third-party driver, not our code)."""

    def __init__(self) -> None:
        self.shutdown = False

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(total=8_000, used=2_000)

    def nvmlShutdown(self) -> None:
        self.shutdown = True


async def test_no_pynvml_gives_null_gpu_fields() -> None:
    sample = await SystemSampler(load_nvml=False).sample()
    assert sample.gpu_percent is None
    assert sample.gpu_memory_percent is None
    assert sample.cpu_percent is not None
    assert 0 <= sample.cpu_percent <= 100
    assert sample.memory_percent is not None
    assert 0 < sample.memory_percent <= 100


async def test_failed_nvml_init_is_tried_once_and_gives_nulls() -> None:
    nvml = BrokenNvml()
    sampler = SystemSampler(nvml)
    for _ in range(3):
        sample = await sampler.sample()
        assert (sample.gpu_percent, sample.gpu_memory_percent) == (None, None)
    assert nvml.init_calls == 1
    assert not sampler.gpu_available


async def test_gpu_fields_when_nvml_works() -> None:
    nvml = OneGpuNvml()
    sampler = SystemSampler(nvml)
    sample = await sampler.sample()
    assert (sample.gpu_percent, sample.gpu_memory_percent) == (37.0, 25.0)
    sampler.close()
    assert nvml.shutdown


async def test_the_real_pynvml_on_this_host_never_crashes() -> None:
    sampler = SystemSampler()
    sample = await sampler.sample()
    if not sampler.gpu_available:
        assert (sample.gpu_percent, sample.gpu_memory_percent) == (None, None)
    else:
        assert sample.gpu_percent is not None
    sampler.close()
