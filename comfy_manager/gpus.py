"""GPU discovery through NVML (pynvml, from nvidia-ml-py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_gb: float


def discover_gpus() -> list[GpuInfo]:
    """The machine's NVIDIA GPUs, each logged; an empty list where NVML or a driver is missing."""
    try:
        import pynvml
    except ImportError:
        log.info("pynvml is not installed: no GPUs")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA driver (%s): running without GPUs", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            memory_gb = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1024**3
            gpus.append(GpuInfo(index=index, name=name, memory_gb=round(memory_gb, 1)))
            log.info("GPU %d: %s, %.1f GiB", index, name, memory_gb)
        return gpus
    finally:
        pynvml.nvmlShutdown()
