"""A job's segment plan: the request's and the template's numbers handed to the pure planner
(worker/planner.py), with a stitch lead learned from the worker's recent jobs.

If every segment ended at the same moment, the whole stitch would come after generation; making each
segment a little shorter than the next (the planner's stitch_lead) lets the stitch of the earlier ones run
meanwhile and leaves only the last segment's share. The right ratio is the stitch's cost per frame (all
encoders at work) over one instance's generation cost per frame, which JobPlanner learns from finished
jobs with the same template, size and steps. Until it has seen one, the lead is 0 (equal segments);
STITCH_LEAD fixes it instead. Workflows whose cost moves in window steps (InfiniteTalk: 72 frames) gain
less from it: segments a few frames apart often sample the same number of windows.

Memory caps segment length the same way (memory_cap): a segment must fit in the memory of any instance
that may run it, at the cost per frame learned from recent jobs (or the template's declared one before
that; worker/memory.py). A longer job then gets more segments than instances; a job whose shortest
possible segment would not fit is refused before any work, with the numbers.

The same log feeds the progress estimates (worker/progress.py): LearnedRates adds what follows generation
(the stitch's tail, the delivery) and where a segment's ComfyUI time goes, node by node.

Then place_seams moves each seam of that plan toward a pause in the job's audio (worker/seam_placement.py),
within SEAM_BUDGET_PERCENT of the job's generation time and what fits in memory.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.config import MB
from worker.errors import JobInputError
from worker.loudness import LoudnessEnvelope
from worker.memory import (FrameCost, Footprints, InstanceBudget, MemoryLimit, MemoryLog, describe_bytes,
                           frames_that_fit, instance_budgets, will_not_fit)
from worker.planner import SegmentPlan, plan_segments
from worker.request import JobRequest
from worker.seam_placement import SeamPlacement, SeamSearch, place_seams
from worker.templates import WorkflowTemplate

if TYPE_CHECKING:
    from worker.response import Timings
    from worker.segments import SegmentResult
    from worker.stitch import StitchResult

log = logging.getLogger(__name__)
SEAM_SEARCH_S = 2.0  # how far (seconds of video) a seam may move either way toward a pause


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


def longest_segment(request: JobRequest, template: WorkflowTemplate) -> int:
    """The template's longest segment, or the request's max_segment_frames where that is shorter."""
    spec = template.spec
    if request.max_segment_frames is None:
        return spec.max_segment_frames
    if request.max_segment_frames < spec.min_segment_frames:
        raise JobInputError("max_segment_frames", f"workflow {template.name!r} needs segments of at least "
                                                  f"{spec.min_segment_frames} frames (got {request.max_segment_frames})")
    return min(spec.max_segment_frames, request.max_segment_frames)


class JobPlanner:
    """Plans jobs' segments; one per worker, so that what a job teaches serves the next ones."""

    def __init__(self, stitch_lead: float | None = None):
        self.fixed_lead = stitch_lead  # STITCH_LEAD; None: learned
        self.throughput = ThroughputLog()
        self.memory = MemoryLog()
        self.footprints = Footprints()  # the instances' idle memory, as seen by this worker

    def stitch_lead(self, key: RateKey) -> float:
        return self.throughput.stitch_lead(key) if self.fixed_lead is None else self.fixed_lead

    def plan(self, request: JobRequest, template: WorkflowTemplate, instances: int, total_frames: int,
             budgets: list[InstanceBudget] | None = None) -> SegmentPlan:
        """As many segments as instances the request may use (and the length allows), overlapping by the
        request's or the template's overlap, on the template's frame grid; none longer than fits in the
        instances' memory `budgets` (memory_budgets)."""
        parallelism = self.parallelism(request, instances)
        overlap = template.spec.overlap_frames if request.overlap_frames is None else request.overlap_frames
        lead = self.stitch_lead(RateKey.of(request, template))
        longest = longest_segment(request, template)
        if longest <= 2 * overlap and total_frames > 2 * longest - overlap:
            # The job needs a middle segment, which holds two overlaps: it has no room for them.
            raise JobInputError("max_segment_frames", f"must be more than twice the overlap ({overlap} frames) "
                                                      f"so that segments have room for both; got {longest}")
        fits = self.memory_cap(request, template, budgets or [], total_frames, overlap)
        try:
            plan = plan_segments(total_frames, parallelism, overlap, template.spec.min_segment_frames,
                                 longest if fits is None else min(longest, fits.frames), template.grid, lead)
        except ValueError as exc:  # only the request's own limits can make a split impossible
            raise JobInputError("max_segment_frames", f"{exc}: raise max_segment_frames or lower overlap_frames") from None
        if fits is not None and max(s.frames for s in plan.segments) > fits.frames:
            raise will_not_fit(f"a {request.width}x{request.height} frame of workflow {template.name!r}", fits,
                               max(s.frames for s in plan.segments), overlap, self.frame_cost(request, template).source)
        log.info("plan: %d frames, %d segment(s), overlap %d, stitch lead %.3f", total_frames,
                 len(plan.segments), plan.overlap, lead)
        return plan

    def learned(self, request: JobRequest, template: WorkflowTemplate) -> LearnedRates | None:
        """What recent jobs of this kind (template, size, steps) took, if the worker has run one."""
        return self.throughput.learned(RateKey.of(request, template))

    def place_seams(self, request: JobRequest, template: WorkflowTemplate, instances: int, plan: SegmentPlan,
                    loudness: LoudnessEnvelope, budget_percent: float,
                    budgets: list[InstanceBudget] | None = None) -> SeamPlacement:
        """The plan's seams moved toward the quietest audio near them (worker/seam_placement.py), at a cost of at
        most budget_percent of the job's generation time; no segment grows past what fits in `budgets`."""
        longest = longest_segment(request, template)
        fits = self.memory_cap(request, template, budgets or [], plan.total_frames, plan.overlap)
        if fits is not None:
            longest = min(longest, fits.frames)
        search = SeamSearch(loudness.levels_db, request.seams.span(plan.overlap), budget_percent / 100,
                            self.parallelism(request, instances), template.grid,
                            max(template.spec.min_segment_frames, 2 * plan.overlap), longest,
                            radius=round(SEAM_SEARCH_S * request.fps))
        placement = place_seams(plan, search)
        if any(placement.shifts):
            log.info("seams moved toward quiet audio by %s frames (cost %.1f of a budget of %.1f frames): %s",
                     list(placement.shifts), placement.cost_frames, placement.budget_frames,
                     ", ".join(s.describe() for s in placement.plan.segments))
        return placement

    @staticmethod
    def parallelism(request: JobRequest, instances: int) -> int:
        """How many instances the request may use at once."""
        parallelism = instances if request.use_multi_gpu else 1
        return parallelism if request.gpu_count is None else min(parallelism, request.gpu_count)

    def plans_by_gpu_count(self, request: JobRequest, template: WorkflowTemplate, instances: int,
                           total_frames: int, budgets: list[InstanceBudget] | None = None) -> dict[int, SegmentPlan]:
        """The plan this job would get on 1, 2 ... `instances` instances (for estimates)."""
        return {count: self.plan(request.model_copy(update={"gpu_count": count, "use_multi_gpu": True}), template,
                                 count, total_frames, budgets) for count in range(1, max(1, instances) + 1)}

    def learned_s_per_frame(self, request: JobRequest, template: WorkflowTemplate) -> float | None:
        """One instance's generation seconds per frame on jobs like this one, if the worker has run any."""
        rates = self.throughput.rates(RateKey.of(request, template))
        return None if rates is None else rates[0]

    def learn(self, request: JobRequest, template: WorkflowTemplate, results: list[SegmentResult],
              stitched: StitchResult, timings: Timings | None = None) -> None:
        """Records a finished job's speeds: ComfyUI seconds per generated frame, stitch seconds per output frame;
        the RAM a frame cost the instances that ran it; with its timings, also the stitch tail, the delivery and
        each node's share (for progress estimates). Segments on cold instances (their first prompt, which loaded
        the models) teach no memory cost, and no speed where warm ones ran too."""
        key = RateKey.of(request, template)
        warm = [r for r in results if not r.cold] or results  # a cold instance's time includes loading its models
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

    # -- memory ----------------------------------------------------------------------------------------

    def memory_budgets(self, instances, reserve_bytes: int, budget_bytes: int | None = None) -> list[InstanceBudget]:
        """Each instance's memory for a segment now (worker/memory.py: instance_budgets)."""
        return instance_budgets(instances, self.footprints, reserve_bytes, budget_bytes)

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

    def memory_cap(self, request: JobRequest, template: WorkflowTemplate, budgets: list[InstanceBudget],
                   total_frames: int, overlap: int) -> MemoryLimit | None:
        """The longest segment that fits in every instance's budget (None: no limit known). JobInputError
        with the numbers when the job needs longer segments than that and the workflow's shortest does not fit."""
        cost = self.frame_cost(request, template)
        fits = frames_that_fit(cost, budgets)
        if fits is None or fits.frames >= total_frames:
            return None
        # Room for a segment's two overlaps and one frame of its own (plan_segments' least), else nothing fits.
        shortest = max(template.spec.min_segment_frames, 2 * overlap + 1)
        if fits.frames < shortest:
            raise will_not_fit(f"a {request.width}x{request.height} frame of workflow {template.name!r}", fits, shortest,
                               overlap, cost.source)
        log.info("plan: memory allows %d frames per segment (%s of %s per frame, %s; %s for frames on %s)",
                 fits.frames, describe_bytes(fits.per_frame_bytes), fits.memory, cost.source,
                 describe_bytes(fits.for_frames_bytes), fits.instance)
        return fits


def node_shares(results: list[SegmentResult]) -> dict[str, float]:
    """Each node's share of the segments' ComfyUI time ("id ClassType" -> 0..1)."""
    total: dict[str, float] = {}
    for result in results:
        for name, seconds in result.node_seconds.items():
            total[name] = total.get(name, 0.0) + seconds
    overall = sum(total.values())
    return {name: seconds / overall for name, seconds in total.items()} if overall > 0 else {}
