"""What the worker learned from its finished jobs, and the small interface planning and progress read it through.

Per kind of job (RateKey: template, preset, size, steps), Learned keeps:
- speeds (ThroughputLog): one instance's ComfyUI seconds per frame and the stitch's seconds per frame, which
  give the stitch lead (worker/planning/plan.py) and the estimate's speed; with a job's timings also what
  follows generation (the stitch's tail, the delivery) and each node's share of a segment's time, for the
  progress ETA (LearnedRates);
- the RAM a frame costs an instance (MemoryLog), which caps segment length;
- each instance process's idle footprint (Footprints), which the memory budgets start from.
Segments on cold instances (their first prompt loaded the models) teach no memory cost, and no speed where
warm ones ran too. STITCH_LEAD fixes the stitch lead instead of learning it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, Sequence

from worker.planning.memory import FrameCost, Footprints, InstanceBudget, MemoryLog, SegmentMemory, instance_budgets
from worker.request.job_request import JobRequest
from worker.request.settings import MB
from worker.templates.template import WorkflowTemplate


@dataclass(frozen=True)
class RateKey:
    """Jobs whose speeds are alike: the same template, preset, size and steps."""

    template: str
    width: int
    height: int
    steps: int | None
    quality: str | None = None

    @classmethod
    def of(cls, request: JobRequest, template: WorkflowTemplate) -> RateKey:
        return cls(template.name, request.width, request.height, request.steps,
                   request.quality or template.spec.default_preset)


@dataclass
class _Rates:
    generate_s_per_frame: float  # one instance
    stitch_s_per_frame: float


@dataclass(frozen=True)
class LearnedRates:
    """What finished jobs of a kind took, for the progress estimate of the next one."""

    generate_s_per_frame: float  # one instance's ComfyUI seconds per frame of its segment
    tail_s_per_frame: float  # per output frame: the stitch left once the last segment is done
    deliver_s_per_frame: float  # per output frame: base64, upload or volume write
    node_shares: dict[str, float]  # "node id ClassType" -> its share of a segment's ComfyUI time

    def smoothed(self, newer: LearnedRates, a: float) -> LearnedRates:
        names = set(self.node_shares) | set(newer.node_shares)
        return LearnedRates(
            a * newer.generate_s_per_frame + (1 - a) * self.generate_s_per_frame,
            a * newer.tail_s_per_frame + (1 - a) * self.tail_s_per_frame,
            a * newer.deliver_s_per_frame + (1 - a) * self.deliver_s_per_frame,
            {n: a * newer.node_shares.get(n, 0.0) + (1 - a) * self.node_shares.get(n, 0.0) for n in names})


class ThroughputLog:
    """Seconds per frame of generation (one instance) and of the stitch, smoothed over recent jobs."""

    def __init__(self, smoothing: float = 0.5):
        self.smoothing = smoothing
        self._rates: dict[RateKey, _Rates] = {}
        self._learned: dict[RateKey, LearnedRates] = {}
        self._lock = threading.Lock()

    def record(self, key: RateKey, generate_s_per_frame: float, stitch_s_per_frame: float) -> None:
        with self._lock:
            seen = self._rates.get(key)
            if seen is None:
                self._rates[key] = _Rates(generate_s_per_frame, stitch_s_per_frame)
                return
            a = self.smoothing
            seen.generate_s_per_frame = a * generate_s_per_frame + (1 - a) * seen.generate_s_per_frame
            seen.stitch_s_per_frame = a * stitch_s_per_frame + (1 - a) * seen.stitch_s_per_frame

    def rates(self, key: RateKey) -> tuple[float, float] | None:
        """(generate, stitch) seconds per frame learned for key, if any."""
        with self._lock:
            seen = self._rates.get(key)
            return None if seen is None else (seen.generate_s_per_frame, seen.stitch_s_per_frame)

    def record_job(self, key: RateKey, rates: LearnedRates) -> None:
        with self._lock:
            seen = self._learned.get(key)
            self._learned[key] = rates if seen is None else seen.smoothed(rates, self.smoothing)

    def learned(self, key: RateKey) -> LearnedRates | None:
        with self._lock:
            return self._learned.get(key)

    def stitch_lead(self, key: RateKey) -> float:
        with self._lock:
            seen = self._rates.get(key)
        if seen is None or seen.generate_s_per_frame <= 0:
            return 0.0
        return min(1.0, seen.stitch_s_per_frame / seen.generate_s_per_frame)


class FinishedSegment(Protocol):
    """What a finished segment teaches (worker/render/segments.py: SegmentResult)."""

    @property
    def segment(self): ...  # its frames: .frames
    @property
    def comfy_seconds(self) -> float: ...
    @property
    def cold(self) -> bool: ...  # its instance loaded the models for it
    @property
    def node_seconds(self) -> dict[str, float]: ...
    @property
    def memory(self) -> SegmentMemory | None: ...


class FinishedStitch(Protocol):
    """What the stitch of a finished job teaches (worker/output/stitch.py: StitchResult)."""

    @property
    def busy_seconds(self) -> float: ...
    @property
    def frames(self) -> int: ...


class JobTimes(Protocol):
    """A finished job's stage times (worker/output/response.py: Timings)."""

    @property
    def stitch(self) -> float: ...
    @property
    def deliver(self) -> float: ...


class Learned:
    """One per worker: what its finished jobs taught, read by the next jobs' plans and progress."""

    def __init__(self, stitch_lead: float | None = None):
        self.fixed_lead = stitch_lead  # STITCH_LEAD; None: learned
        self.throughput = ThroughputLog()
        self.memory = MemoryLog()
        self.footprints = Footprints()  # the instances' idle memory, as seen by this worker

    def stitch_lead(self, request: JobRequest, template: WorkflowTemplate) -> float:
        """The stitch's seconds per frame over one instance's generation seconds per frame (0 before a job)."""
        return self.throughput.stitch_lead(RateKey.of(request, template)) if self.fixed_lead is None else self.fixed_lead

    def rates(self, request: JobRequest, template: WorkflowTemplate) -> LearnedRates | None:
        """What recent jobs of this kind (template, size, steps) took, if the worker has run one."""
        return self.throughput.learned(RateKey.of(request, template))

    def learned_s_per_frame(self, request: JobRequest, template: WorkflowTemplate) -> float | None:
        """One instance's generation seconds per frame on jobs like this one, if the worker has run any."""
        rates = self.throughput.rates(RateKey.of(request, template))
        return None if rates is None else rates[0]

    def frame_cost(self, request: JobRequest, template: WorkflowTemplate) -> FrameCost:
        """A frame's RAM as learned for this template, size and steps, else as the template declares it;
        VRAM as declared."""
        declared = template.spec.memory
        pixels = request.width * request.height
        learned = self.memory.ram_per_frame(RateKey.of(request, template))
        fixed = {"ram_fixed_bytes": declared.ram_fixed_mb * MB, "vram_fixed_bytes": declared.vram_fixed_mb * MB}
        if learned is not None:
            return FrameCost(learned, declared.vram_bytes_per_pixel * pixels, **fixed, source="measured on recent jobs")
        return FrameCost(declared.ram_bytes_per_pixel * pixels, declared.vram_bytes_per_pixel * pixels, **fixed)

    def memory_budgets(self, instances, reserve_bytes: int, budget_bytes: int | None = None) -> list[InstanceBudget]:
        """Each instance's memory for a segment now (worker/planning/memory.py: instance_budgets); records the
        instances' footprints as it reads them."""
        return instance_budgets(instances, self.footprints, reserve_bytes, budget_bytes)

    def learn(self, request: JobRequest, template: WorkflowTemplate, results: Sequence[FinishedSegment],
              stitched: FinishedStitch, timings: JobTimes | None = None) -> None:
        """Records a finished job's speeds: ComfyUI seconds per generated frame, stitch seconds per output frame;
        the RAM a frame cost the instances that ran it; with its timings, also the stitch tail, the delivery and
        each node's share (for progress estimates). Segments on cold instances (their first prompt, which loaded
        the models) teach no memory cost, and no speed where warm ones ran too; segments other workers rendered
        (fan-out) teach nothing about this worker's instances."""
        key = RateKey.of(request, template)
        results = [r for r in results if getattr(r, "worker", None) is None]  # other workers' GPUs teach nothing here
        if not results:
            return
        warm = [r for r in results if not r.cold] or list(results)  # a cold instance's time includes loading
        generate = sum(r.comfy_seconds for r in warm) / sum(r.segment.frames for r in warm)
        self.throughput.record(key, generate, stitched.busy_seconds / stitched.frames)
        fixed = template.spec.memory.ram_fixed_mb * MB
        measured = [r.memory.per_frame(r.segment.frames, self.footprints.see(r.memory.pid, r.memory.least_bytes), fixed)
                    for r in results if r.memory is not None and not r.cold]  # a cold peak is mostly the models
        if measured:
            self.memory.record(key, max(measured))
        if timings is not None:
            self.throughput.record_job(key, LearnedRates(generate, timings.stitch / stitched.frames,
                                                         timings.deliver / stitched.frames, node_shares(warm)))


def node_shares(results: Sequence[FinishedSegment]) -> dict[str, float]:
    """Each node's share of the segments' ComfyUI time ("id ClassType" -> 0..1)."""
    total: dict[str, float] = {}
    for result in results:
        for name, seconds in result.node_seconds.items():
            total[name] = total.get(name, 0.0) + seconds
    overall = sum(total.values())
    return {name: seconds / overall for name, seconds in total.items()} if overall > 0 else {}
