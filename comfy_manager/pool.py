"""The set of ComfyUI instances of this machine: started together, kept healthy, shared by every job.

Health. The pool owns its instances' health. A watcher thread notices a process that died (idle or
running a segment) within a second; `release` hears from the jobs when an instance failed them through
its own fault. Either way the instance is restarted in the background: the first time at once, then with
a back-off that doubles for each restart within a window, and after `restart_limit` restarts in that
window (or when its log shows a GPU state that restarts cannot fix) it is taken out of service. An
instance being restarted still counts as in service (`size`): it is expected back within a boot, and a
job planned for it waits for it rather than running longer segments on fewer instances. Once none is in
service, every waiting and every later `acquire` fails at once with NoInstanceLeft, whose message names
each instance, why it is out and its last log lines.

Lending. `acquire` hands free instances out in the order the requests arrived: a released instance goes
straight to the longest waiter. It takes the job's cancel event; a CancelEvent wakes the waiter the
moment it is set. An instance that goes idle with nobody waiting for it is asked to drop what ComfyUI
keeps from its last prompt (POST /free), so that memory between jobs stays flat (by default CPU instances
only: a GPU instance's cache holds its models, which the next job would load again).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from comfy_manager.cancel import CancelEvent
from comfy_manager.client import InstanceFault
from comfy_manager.gpus import GpuInfo, discover_gpus
from comfy_manager.instance import START_MARK, ComfyInstance, InstanceDied, InstanceSpec
from comfy_manager.settings import PoolSettings

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0  # how often the watcher looks at the processes
MAX_BACKOFF_S = 60.0
PLAIN_EVENT_CHECK_S = 0.25  # how often a waiter looks at a cancel event that cannot wake it (threading.Event)
LOG_LINES = 15  # of each instance's log, in NoInstanceLeft
# Log lines after which restarting the process cannot help: the GPU or its driver is gone or broken.
FATAL_GPU_TEXT = re.compile(
    r"uncorrectable ECC error|GPU is lost|fallen off the bus|no CUDA-capable device is detected"
    r"|No CUDA GPUs are available|CUDA driver version is insufficient|busy or unavailable"
    r"|Unable to determine the device handle", re.IGNORECASE)


class PoolStartError(RuntimeError):
    """No ComfyUI instance could be started. `causes`: one line per reason (each failed instance: how it
    ended and the last line of its log, with the log's path), for the worker's start-up report."""

    def __init__(self, message: str, causes: list[str] | None = None):
        super().__init__(message)
        self.causes = causes or [message]


def _start_failure_line(instance: ComfyInstance, error: str | None) -> str:
    """One line: how the instance's start failed, and its log's last line (what ComfyUI said before it ended)."""
    if error is None:
        return f"ComfyUI {instance.name}: the pool was shut down"
    last = next((line.strip() for line in reversed(instance.log_tail(40).splitlines())
                 if line.strip() and not line.startswith(START_MARK.strip())), "")
    said = f", its log ends {last[:200]!r}" if last and last != "(no log)" else ""
    return f"{error.splitlines()[0].removesuffix('. Last log lines:')}{said} ({instance.log_path})"


class NoInstanceLeft(RuntimeError):
    """No instance can serve: every one is out of service (or the pool was shut down)."""


class AcquireCancelled(RuntimeError):
    """The caller's cancel event was set while it waited for an instance."""


class Health(enum.Enum):
    SERVING = "serving"  # ready: free or lent to a segment
    RESTARTING = "restarting"  # being restarted by the pool
    OUT = "out of service"  # restarts kept failing, or the GPU is in a state restarts cannot fix


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


@dataclass
class RestartBudget:
    """At most `limit` restarts within `window_s`; before each one after the first, a wait of backoff_s
    doubled for each restart already in the window (at most MAX_BACKOFF_S)."""

    limit: int
    window_s: float
    backoff_s: float
    times: deque[float] = field(default_factory=deque)

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next restart; None when the budget is spent."""
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return None
        return 0.0 if not self.times else min(MAX_BACKOFF_S, self.backoff_s * 2 ** (len(self.times) - 1))

    def spend(self, when: float) -> None:
        self.times.append(when)


@dataclass(eq=False)
class _Slot:
    """What the pool knows of one instance."""

    instance: ComfyInstance
    budget: RestartBudget
    health: Health = Health.SERVING
    lent: bool = False
    lent_generation: int = 0  # the process it was lent with (a restart makes a new one)
    ran_prompt: bool = False  # since it was last asked to free its memory
    reason: str = ""  # why it was last restarted or taken out


@dataclass(eq=False)
class _Waiter:
    woken: threading.Event = field(default_factory=threading.Event)
    instance: ComfyInstance | None = None
    error: BaseException | None = None


class InstancePool:
    """Starts every instance at once, keeps them healthy and lends ready ones to segments in arrival order."""

    def __init__(self, settings: PoolSettings):
        self.settings = settings
        self.startup_s = 0.0
        self._slots: dict[ComfyInstance, _Slot] = {}
        self._booting: list[ComfyInstance] = []  # started by start(), not yet in a slot
        self._free: deque[_Slot] = deque()
        self._waiters: deque[_Waiter] = deque()
        # Reentrant: shutdown() may run in a signal handler while the main thread holds the lock.
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._started = False

    # -- what jobs see ---------------------------------------------------------------------------

    @property
    def instances(self) -> list[ComfyInstance]:
        """Every instance the pool manages, in service or not."""
        return list(self._slots)

    @property
    def serving_instances(self) -> list[ComfyInstance]:
        """The instances in service (what `size` counts)."""
        with self._lock:
            return [slot.instance for slot in self._slots.values() if slot.health is not Health.OUT]

    @property
    def size(self) -> int:
        """Instances in service: ready (free or lent) or being restarted; not those taken out of service."""
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.health is not Health.OUT)

    def free_count(self) -> int:
        return len(self._free)

    def waiting(self) -> int:
        """How many acquire calls are waiting for an instance."""
        return len(self._waiters)

    def health(self) -> dict[str, tuple[Health, str]]:
        """instance name -> (its health, why it was last restarted or taken out)."""
        with self._lock:
            return {slot.instance.name: (slot.health, slot.reason) for slot in self._slots.values()}

    def check_serving(self) -> None:
        """Raises NoInstanceLeft if no instance is in service."""
        with self._lock:
            self._check_serving()

    # -- start and stop --------------------------------------------------------------------------

    def start(self) -> None:
        """Starts all instances in parallel; keeps those that become ready; raises if none does. Then
        watches them."""
        if not (self.settings.comfy_path / "main.py").exists():
            raise PoolStartError(
                f"ComfyUI not found at {self.settings.comfy_path}: run scripts/install_comfyui.sh "
                "or set COMFYUI_PATH")
        started = time.monotonic()
        specs = instance_specs(self.settings, discover_gpus())
        cpu_threads = max(1, len(os.sched_getaffinity(0)) // len(specs))  # the cores this worker may use, shared out
        candidates = [ComfyInstance(spec, self.settings.comfy_path, self.settings.python,
                                    self.settings.extra_args, cpu_threads) for spec in specs]
        deadline = time.monotonic() + self.settings.startup_timeout_s
        with self._lock:
            if self._closed.is_set():
                raise PoolStartError("the pool was shut down before it started")
            self._booting = candidates
        for instance in candidates:
            instance.start()
        failures: list[str] = []
        causes: list[str] = []
        with ThreadPoolExecutor(max_workers=len(candidates)) as executor:
            results = list(executor.map(lambda inst: self._await_ready(inst, deadline), candidates))
        with self._lock:
            for instance, error in zip(candidates, results):
                if error is None and not self._closed.is_set():
                    slot = _Slot(instance, RestartBudget(self.settings.restart_limit, self.settings.restart_window_s,
                                                         self.settings.restart_backoff_s))
                    self._slots[instance] = slot
                    self._free.append(slot)
                else:
                    failures.append(error or f"ComfyUI {instance.name}: the pool was shut down")
                    causes.append(_start_failure_line(instance, error))
            self._booting = []
            self._started = True
        for instance in candidates:
            if instance not in self._slots:
                instance.stop()
        self.startup_s = time.monotonic() - started
        if not self._slots:
            raise PoolStartError("no ComfyUI instance started:\n" + "\n\n".join(failures), causes)
        if failures:
            log.warning("serving with %d of %d instances; failed: %s",
                        len(self._slots), len(candidates), "\n".join(failures))
        log.info("%d ComfyUI instance(s) ready in %.1f s: %s", len(self._slots), self.startup_s,
                 ", ".join(inst.name for inst in self._slots))
        threading.Thread(target=self._watch, name="comfy-watcher", daemon=True).start()

    def _await_ready(self, instance: ComfyInstance, deadline: float) -> str | None:
        """None once the instance is ready; a boot that fails is retried once."""
        for attempt in (1, 2):
            try:
                instance.wait_ready(deadline)
                return None
            except InstanceDied as exc:
                if attempt == 2 or self._closed.is_set():
                    return str(exc)
                log.warning("ComfyUI %s failed to start; retrying once. %s", instance.name, exc)
                instance.stop(grace_s=3.0)
                instance.start()
                deadline = time.monotonic() + self.settings.startup_timeout_s

    def shutdown(self) -> None:
        """Stops every instance (in parallel); waiting and later acquire calls get NoInstanceLeft."""
        with self._lock:
            self._closed.set()
            instances = list(self._slots) + self._booting
            self._slots.clear()
            self._free.clear()
            self._fail_waiters(NoInstanceLeft("the ComfyUI instances were shut down"))
        stoppers = [threading.Thread(target=instance.stop) for instance in instances]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()

    # -- lending ---------------------------------------------------------------------------------

    def acquire(self, cancel: threading.Event | None = None, timeout_s: float | None = None) -> ComfyInstance:
        """A free instance, for the caller alone until release(); the longest waiter is served first.

        Raises AcquireCancelled when `cancel` is set while waiting, NoInstanceLeft when no instance is (or
        is left) in service, TimeoutError after timeout_s.
        """
        with self._lock:
            self._check_serving()
            if self._free and not self._waiters:
                return self._lend(self._free.popleft())
            waiter = _Waiter()
            self._waiters.append(waiter)
        unsubscribe = cancel.subscribe(waiter.woken.set) if isinstance(cancel, CancelEvent) else None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                if cancel is not None and unsubscribe is None:
                    wait_s = PLAIN_EVENT_CHECK_S if wait_s is None else min(wait_s, PLAIN_EVENT_CHECK_S)
                waiter.woken.wait(wait_s)
                with self._lock:
                    cancelled = cancel is not None and cancel.is_set()
                    if waiter.instance is not None:
                        if not cancelled:
                            return waiter.instance
                        slot = self._slots.get(waiter.instance)
                        if slot is not None:
                            self._return(slot)  # to the next in line
                        raise AcquireCancelled("cancelled while waiting for a ComfyUI instance")
                    if waiter.error is not None:
                        raise waiter.error
                    if cancelled or (deadline is not None and time.monotonic() >= deadline):
                        self._waiters.remove(waiter)
                        if cancelled:
                            raise AcquireCancelled("cancelled while waiting for a ComfyUI instance")
                        raise TimeoutError(f"no ComfyUI instance became free within {timeout_s} s")
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def release(self, instance: ComfyInstance, failure: BaseException | None = None) -> None:
        """Takes back a lent instance. The one place that decides whether it is restarted: when the work
        failed through the instance's own fault (InstanceFault: it stopped answering, answered 5xx or
        nonsense) or its process is gone. A failure of an earlier process (restarted by the watcher while
        lent) does not restart the new one."""
        with self._lock:
            slot = self._slots.get(instance)
            if slot is None or not slot.lent:
                log.warning("ComfyUI %s was released but not lent", instance.name)
                return
            slot.lent = False
            if slot.health is not Health.SERVING:
                return  # being restarted, or out of service: the pool already has it in hand
            same_process = slot.lent_generation == instance.generation
            if same_process and not instance.is_alive():
                self._begin_restart(slot, self._death(instance, "while running a segment"))
            elif same_process and isinstance(failure, InstanceFault):
                self._begin_restart(slot, f"{type(failure).__name__}: {str(failure).splitlines()[0][:300]}")
            else:
                self._return(slot)

    def _check_serving(self) -> None:
        if self._closed.is_set():
            raise NoInstanceLeft("the ComfyUI instances were shut down")
        if not self._started:
            raise NoInstanceLeft("the ComfyUI instances were not started")
        if all(slot.health is Health.OUT for slot in self._slots.values()):
            raise NoInstanceLeft(self._unserviceable())

    def _lend(self, slot: _Slot) -> ComfyInstance:
        slot.lent = True
        slot.lent_generation = slot.instance.generation
        slot.ran_prompt = True
        return slot.instance

    def _return(self, slot: _Slot) -> None:
        """A ready instance back into service: to the longest waiter, else onto the free list."""
        slot.lent = False
        if slot.health is not Health.SERVING or self._closed.is_set():
            return
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.instance = self._lend(slot)
            waiter.woken.set()
            return
        self._free.append(slot)
        if slot.ran_prompt and self._frees_when_idle(slot.instance):
            slot.ran_prompt = False
            slot.instance.models_unloaded()  # the next prompt loads them again
            threading.Thread(target=_free_memory, args=(slot.instance,), name=f"free-{slot.instance.name}",
                             daemon=True).start()

    def _frees_when_idle(self, instance: ComfyInstance) -> bool:
        """COMFY_FREE_WHEN_IDLE; auto: CPU instances free, GPU instances keep their models for the next job."""
        free = self.settings.free_when_idle
        return instance.gpu is None if free is None else free

    def _fail_waiters(self, error: BaseException) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.error = error
            waiter.woken.set()

    # -- health ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Restarts instances whose process died, whether idle or lent."""
        while not self._closed.wait(WATCH_INTERVAL_S):
            with self._lock:
                for slot in list(self._slots.values()):
                    if slot.health is Health.SERVING and not slot.instance.is_alive():
                        where = "while running a segment" if slot.lent else "while idle"
                        self._begin_restart(slot, self._death(slot.instance, where))

    @staticmethod
    def _death(instance: ComfyInstance, where: str) -> str:
        why = f"{instance.exit_status() or 'stopped'} {where}"
        memory = instance.out_of_memory(wait_s=0)
        return f"{why}: out of memory ({memory})" if memory else why

    def _begin_restart(self, slot: _Slot, reason: str) -> None:
        """Takes the instance out of the free list and restarts it in the background (lock held)."""
        if self._closed.is_set():
            return
        slot.health, slot.reason = Health.RESTARTING, reason
        if slot in self._free:
            self._free.remove(slot)
        log.warning("ComfyUI %s %s; restarting it", slot.instance.name, reason)
        threading.Thread(target=self._restart, args=(slot,), name=f"restart-{slot.instance.name}",
                         daemon=True).start()

    def _restart(self, slot: _Slot) -> None:
        """Restarts until the instance is ready, the budget is spent, or the GPU cannot be helped."""
        instance = slot.instance
        while True:
            with self._lock:
                if self._closed.is_set():
                    return
                delay = slot.budget.next_delay(time.monotonic())
                if delay is None:
                    self._take_out(slot, f"{slot.budget.limit} restarts within {slot.budget.window_s:.0f} s "
                                         f"(COMFY_RESTART_LIMIT, COMFY_RESTART_WINDOW_S); the last: {slot.reason}")
                    break
                slot.budget.spend(time.monotonic() + delay)
            if self._closed.wait(delay):
                return
            instance.stop(grace_s=3.0)
            try:
                instance.start()
                instance.wait_ready(time.monotonic() + self.settings.startup_timeout_s)
            except (InstanceDied, OSError) as exc:
                fatal = FATAL_GPU_TEXT.search(instance.log_tail(40))
                with self._lock:
                    slot.reason = f"restart failed: {str(exc).splitlines()[0]}"
                    if fatal:
                        self._take_out(slot, f"its GPU is in a state a restart cannot fix ({fatal.group(0)})")
                        break
                log.warning("ComfyUI %s: %s", instance.name, slot.reason)
                continue
            with self._lock:
                if self._closed.is_set():
                    break
                slot.health, slot.reason = Health.SERVING, ""
                log.info("ComfyUI %s is back in service", instance.name)
                if not slot.lent:
                    self._return(slot)
                return
        instance.stop()

    def _take_out(self, slot: _Slot, reason: str) -> None:
        """Out of service for good (lock held); with none left, every waiter fails at once."""
        slot.health, slot.reason = Health.OUT, reason
        if slot in self._free:
            self._free.remove(slot)
        log.error("ComfyUI %s is out of service: %s. Last log lines:\n%s", slot.instance.name, reason,
                  slot.instance.log_tail(LOG_LINES))
        if all(s.health is Health.OUT for s in self._slots.values()):
            self._fail_waiters(NoInstanceLeft(self._unserviceable()))

    def _unserviceable(self) -> str:
        parts = [f"{slot.instance.name}: {slot.reason}" for slot in self._slots.values()]
        logs = [f"last log lines of {slot.instance.name}:\n{slot.instance.log_tail(LOG_LINES)}"
                for slot in self._slots.values()]
        return "no ComfyUI instance can serve; " + "; ".join(parts) + "\n" + "\n".join(logs)


def _free_memory(instance: ComfyInstance) -> None:
    """Asks ComfyUI to drop its cached node outputs and the models they hold (applied between prompts)."""
    try:
        requests.post(f"{instance.url}/free", json={"free_memory": True, "unload_models": True}, timeout=5)
    except requests.RequestException as exc:
        log.info("ComfyUI %s: POST /free failed (%s)", instance.name, exc)
