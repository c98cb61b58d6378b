"""Memory budgets: how much RAM (and VRAM) each ComfyUI instance may fill with a segment's frames, and what
a frame costs it, measured while segments run.

A ComfyUI instance holds a segment's decoded frames as float32 tensors, several copies deep (a 512x512
`restyle` frame costs about 18 MB), so an instance's peak memory grows with its segment's length:

    peak = idle footprint + frames x cost per frame

The worker measures both: an instance's idle footprint is the least anonymous memory (RSS less file-backed
pages: mapped model files are not counted, the kernel can drop those) it has been seen with, counted afresh
once its first prompt has loaded its models; a segment's peak is sampled while its prompt runs
(PeakMemory), and a first prompt's peak (mostly the models) teaches nothing. Learned (worker/planning/learned.py) learns the cost per
frame from them, per
template, size and steps, as it learns speeds; a template may declare it (TemplateSpec.memory) for the jobs
before. The budget of the instances together is the RAM available now (the machine's, or its container's
limit), plus what the instances hold beyond their footprint (ComfyUI keeps the last prompt's outputs
until the next one replaces them), less MEMORY_RESERVE_MB for the worker, its ffmpeg processes and the
system; each instance gets an equal share (MEMORY_BUDGET_MB fixes the total instead). VRAM: a GPU instance
has its VRAM (or COMFY_VRAM_LIMIT_GB) for what the template declares; ComfyUI fills VRAM with resident models
whatever a job needs, so its usage does not measure a frame's cost, and it is not learned.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import psutil

from worker.request.settings import MB
from worker.request.errors import JobInputError

GB = 1024**3
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class FrameCost:
    """What a segment costs an instance, in bytes: per frame, and fixed whatever its length (model weights);
    and where the per-frame RAM comes from."""

    ram_bytes: float
    vram_bytes: float = 0.0
    ram_fixed_bytes: float = 0.0
    vram_fixed_bytes: float = 0.0
    source: str = "declared by the template"  # or "measured on recent jobs"


@dataclass(frozen=True)
class InstanceBudget:
    """What one instance may hold for a segment's frames, beyond its idle footprint."""

    name: str
    ram_bytes: int
    vram_bytes: int | None  # None: a CPU instance
    share_bytes: int  # its share of the instances' RAM (the footprint included), for messages


def anonymous_rss(pid: int) -> int:
    """Resident memory of a process and its children that is not backed by files (0 if it is gone)."""
    try:
        process = psutil.Process(pid)
        total = 0
        for proc in [process, *process.children(recursive=True)]:
            info = proc.memory_info()
            total += info.rss - getattr(info, "shared", 0)
        return max(0, total)
    except psutil.Error:
        return 0


def available_ram() -> int:
    """RAM that can be used now: the kernel's MemAvailable, or less where a container's cgroup limit is lower."""
    available = psutil.virtual_memory().available
    for limit_file, usage_file, stat_file, inactive in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
             "total_inactive_file")):  # cgroup v1
        try:
            root = Path("/sys/fs/cgroup")
            limit_text = (root / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
                continue
            stats = dict(line.split() for line in (root / stat_file).read_text().splitlines() if " " in line)
            used = int((root / usage_file).read_text()) - int(stats.get(inactive, 0))
            available = min(available, int(limit_text) - used)
        except (OSError, ValueError):
            continue
    return max(0, available)


class Footprints:
    """Each instance process's idle footprint: the least anonymous memory it has been seen with, before its
    first prompt and after it apart (`warm`): once warm, a process holds its models (a GPU instance keeps
    them in RAM between jobs), which are no frame's cost and no budget's to hand out."""

    def __init__(self):
        self._least: dict[tuple[int, bool], int] = {}
        self._lock = threading.Lock()

    def see(self, pid: int, anonymous_bytes: int, warm: bool = True) -> int:
        """Records a reading of the process; returns its footprint so far."""
        key = (pid, warm)
        with self._lock:
            if anonymous_bytes > 0:
                self._least[key] = min(self._least.get(key, anonymous_bytes), anonymous_bytes)
            return self._least.get(key, anonymous_bytes)


class PeakMemory:
    """Samples a process's anonymous memory (children included) while the with-block runs: its peak and least."""

    interval_s = 0.1

    def __init__(self, pid: int | None):
        self.pid = pid
        self.peak = 0
        self.least = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        value = anonymous_rss(self.pid) if self.pid else 0
        if value:
            self.peak = max(self.peak, value)
            self.least = min(self.least or value, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass(frozen=True)
class SegmentMemory:
    """An instance process's anonymous memory while it ran a segment: its peak and its least."""

    pid: int
    peak_bytes: int
    least_bytes: int

    @classmethod
    def of(cls, pid: int | None, sampler: PeakMemory) -> SegmentMemory | None:
        return cls(pid, sampler.peak, sampler.least) if pid and sampler.peak else None

    def per_frame(self, frames: int, footprint_bytes: int, fixed_bytes: float = 0.0) -> float:
        """Bytes per frame the segment added to the instance's idle footprint (its fixed part, e.g. model
        weights, taken off)."""
        return max(0.0, self.peak_bytes - footprint_bytes - fixed_bytes) / max(1, frames)


def instance_budgets(instances, footprints: Footprints, reserve_bytes: int,
                     budget_bytes: int | None = None) -> list[InstanceBudget]:
    """Each instance's budget for a segment: an equal share of the RAM the instances may use together
    (budget_bytes, else what is available now plus what they hold beyond their idle footprints, less
    reserve_bytes), less its own footprint; VRAM: a GPU instance's VRAM (COMFY_VRAM_LIMIT_GB where set)."""
    readings = []
    for instance in instances:
        pid = instance.process.pid if getattr(instance, "process", None) is not None else None
        now = anonymous_rss(pid) if pid else 0
        warm = instance.warm  # once it has loaded its models, they are no budget to hand out
        readings.append((instance, now, footprints.see(pid, now, warm) if pid else 0))
    if budget_bytes is None:
        held = sum(max(0, now - footprint) for _, now, footprint in readings)
        budget_bytes = available_ram() + held - reserve_bytes
    share = max(0, budget_bytes) // max(1, len(readings))
    return [InstanceBudget(instance.name, max(0, share - footprint),
                           None if instance.vram_gb is None else int(instance.vram_gb * GB), share)
            for instance, _, footprint in readings]


class MemoryLog:
    """RAM bytes per frame of a segment (one instance), per kind of job (worker/planning/learned.py: RateKey): a rise counts
    at once (memory is planned for the worst seen), a fall is smoothed in."""

    def __init__(self, smoothing: float = 0.5):
        self.smoothing = smoothing
        self._per_frame: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def record(self, key: Hashable, ram_bytes_per_frame: float) -> None:
        with self._lock:
            seen = self._per_frame.get(key)
            if seen is None or ram_bytes_per_frame >= seen:
                self._per_frame[key] = ram_bytes_per_frame
            else:
                self._per_frame[key] = self.smoothing * ram_bytes_per_frame + (1 - self.smoothing) * seen

    def ram_per_frame(self, key: Hashable) -> float | None:
        with self._lock:
            return self._per_frame.get(key)


@dataclass(frozen=True)
class MemoryLimit:
    """The most frames a segment may have, and the instance and memory that limit it."""

    frames: int
    instance: str
    memory: str  # "RAM" or "VRAM"
    for_frames_bytes: int  # what that instance has for a segment's frames
    per_frame_bytes: float
    budget: InstanceBudget


def frames_that_fit(cost: FrameCost, budgets: list[InstanceBudget]) -> MemoryLimit | None:
    """The most frames a segment may have and still fit on every instance (any of them may run it); None
    when the cost is unknown (nothing to cap)."""
    limits = []
    for budget in budgets:
        for memory, available, fixed, per_frame in (
                ("RAM", budget.ram_bytes, cost.ram_fixed_bytes, cost.ram_bytes),
                ("VRAM", budget.vram_bytes, cost.vram_fixed_bytes, cost.vram_bytes)):
            if per_frame > 0 and available is not None:
                for_frames = max(0, int(available - fixed))
                limits.append(MemoryLimit(int(for_frames // per_frame), budget.name, memory, for_frames, per_frame,
                                          budget))
    return min(limits, key=lambda limit: limit.frames) if limits else None


def will_not_fit(frame: str, fits: MemoryLimit, needed: int, overlap: int, source: str = "") -> JobInputError:
    """The refusal of a job whose segments cannot fit in the instances' memory, with the numbers; `frame`
    says whose frame ("a 512x512 frame of workflow 'restyle'")."""
    where = ("its share of the RAM the instances may use "
             f"({describe_bytes(fits.budget.share_bytes)}: RAM available less MEMORY_RESERVE_MB, or MEMORY_BUDGET_MB, "
             "split between the instances) less its idle footprint and what the workflow holds whatever the length") \
        if fits.memory == "RAM" else \
        "its VRAM (COMFY_VRAM_LIMIT_GB where set) less what the workflow keeps loaded"
    return JobInputError("width", (
        f"{frame} costs an instance about "
        f"{describe_bytes(fits.per_frame_bytes)} of {fits.memory}{f' ({source})' if source else ''}; "
        f"{fits.instance} has {describe_bytes(fits.for_frames_bytes)} of {fits.memory} for frames ({where}), so a "
        f"segment could hold {fits.frames} frames, fewer than the {needed} this job's segments need (overlap "
        f"{overlap}); use a smaller width and height or overlap_frames, or more memory"))


def describe_bytes(value: float) -> str:
    return f"{value / GB:.1f} GB" if value >= GB else f"{value / MB:.0f} MB"
