"""The set of ComfyUI instances of this machine: started together, shared by every job through one queue."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from comfy_manager.client import ConnectionLost
from comfy_manager.gpus import GpuInfo, discover_gpus
from comfy_manager.instance import ComfyInstance, InstanceDied, InstanceSpec
from comfy_manager.settings import PoolSettings

log = logging.getLogger(__name__)


class PoolStartError(RuntimeError):
    """No ComfyUI instance could be started."""


def instance_specs(settings: PoolSettings, gpus: list[GpuInfo]) -> list[InstanceSpec]:
    """One instance per GPU; with no GPU (or force_cpu), settings.cpu_instances CPU instances."""
    if settings.gpus is not None:
        gpus = [gpu for gpu in gpus if gpu.index in settings.gpus]
    if gpus and not settings.force_cpu:
        devices: list[GpuInfo | None] = list(gpus)
    else:
        devices = [None] * max(1, settings.cpu_instances)
    limit = settings.vram_limit_gb
    return [
        InstanceSpec(index=i, port=settings.base_port + i, gpu=None if gpu is None else gpu.index,
                     root=settings.instances_dir / f"instance-{i}",
                     vram_gb=None if gpu is None else min(gpu.memory_gb, limit or gpu.memory_gb),
                     vram_limit_gb=None if gpu is None else limit,
                     gpu_memory_gb=None if gpu is None else gpu.memory_gb)
        for i, gpu in enumerate(devices)
    ]


class InstancePool:
    """Starts every instance at once and lends ready ones to segment runs, first come first served."""

    def __init__(self, settings: PoolSettings):
        self.settings = settings
        self.instances: list[ComfyInstance] = []
        self.startup_s = 0.0
        self._free: queue.Queue[ComfyInstance] = queue.Queue()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self.instances)

    def start(self) -> None:
        """Starts all instances in parallel; keeps those that become ready; raises if none does."""
        if not (self.settings.comfy_path / "main.py").exists():
            raise PoolStartError(
                f"ComfyUI not found at {self.settings.comfy_path}: run scripts/install_comfyui.sh "
                "or set COMFYUI_PATH")
        started = time.monotonic()
        specs = instance_specs(self.settings, discover_gpus())
        cpu_threads = max(1, (os.cpu_count() or 1) // len(specs))
        candidates = [ComfyInstance(spec, self.settings.comfy_path, self.settings.python,
                                    self.settings.extra_args, cpu_threads) for spec in specs]
        deadline = time.monotonic() + self.settings.startup_timeout_s
        for instance in candidates:
            instance.start()
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=len(candidates)) as executor:
            results = list(executor.map(lambda inst: self._await_ready(inst, deadline), candidates))
        for instance, error in zip(candidates, results):
            if error is None:
                self.instances.append(instance)
                self._free.put(instance)
            else:
                instance.stop()
                failures.append(error)
        self.startup_s = time.monotonic() - started
        if not self.instances:
            raise PoolStartError("no ComfyUI instance started:\n" + "\n\n".join(failures))
        if failures:
            log.warning("serving with %d of %d instances; failed: %s",
                        len(self.instances), len(candidates), "\n".join(failures))
        log.info("%d ComfyUI instance(s) ready in %.1f s: %s", len(self.instances), self.startup_s,
                 ", ".join(inst.name for inst in self.instances))

    def _await_ready(self, instance: ComfyInstance, deadline: float) -> str | None:
        """None once the instance is ready; a boot that fails is retried once."""
        for attempt in (1, 2):
            try:
                instance.wait_ready(deadline)
                return None
            except InstanceDied as exc:
                if attempt == 2:
                    return str(exc)
                log.warning("ComfyUI %s failed to start; retrying once. %s", instance.name, exc)
                instance.stop(grace_s=3.0)
                instance.start()
                deadline = time.monotonic() + self.settings.startup_timeout_s

    def acquire(self, timeout_s: float | None = None) -> ComfyInstance:
        """Waits for a free instance (the longest waiter is served first)."""
        try:
            return self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no ComfyUI instance became free within {timeout_s} s") from None

    def release(self, instance: ComfyInstance, failure: BaseException | None = None) -> None:
        """Takes back a lent instance. If the work on it failed through the instance's own fault (it stopped
        answering, or its process is gone), it is restarted first (recover); otherwise it is free at once."""
        if failure is not None and (isinstance(failure, ConnectionLost) or not instance.is_alive()):
            self.recover(instance)
        else:
            self._free.put(instance)

    def free_count(self) -> int:
        return self._free.qsize()

    def recover(self, instance: ComfyInstance) -> None:
        """Takes a failed instance out of service, restarts it in the background, lends it again once ready."""
        def restart() -> None:
            log.warning("restarting ComfyUI %s", instance.name)
            if self._closed:
                return
            try:
                instance.stop(grace_s=3.0)
                instance.start()
                instance.wait_ready(time.monotonic() + self.settings.startup_timeout_s)
            except InstanceDied as exc:
                log.error("ComfyUI %s could not be restarted and stays out of service: %s", instance.name, exc)
                return
            if self._closed:  # shut down meanwhile
                instance.stop()
            else:
                self._free.put(instance)

        threading.Thread(target=restart, name=f"restart-{instance.name}", daemon=True).start()

    def shutdown(self) -> None:
        self._closed = True
        for instance in self.instances:
            instance.stop()
        self.instances = []
