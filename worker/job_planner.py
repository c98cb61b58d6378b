"""A job's segment plan: the request's and the template's numbers handed to the pure planner
(worker/planner.py), with a stitch lead learned from the worker's recent jobs.

If every segment ended at the same moment, the whole stitch would come after generation; making each
segment a little shorter than the next (the planner's stitch_lead) lets the stitch of the earlier ones run
meanwhile and leaves only the last segment's share. The right ratio is the stitch's cost per frame (all
encoders at work) over one instance's generation cost per frame, which JobPlanner learns from finished
jobs with the same template, size and steps. Until it has seen one, the lead is 0 (equal segments);
STITCH_LEAD fixes it instead. Workflows whose cost moves in window steps (InfiniteTalk: 72 frames) gain
less from it: segments a few frames apart often sample the same number of windows.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.errors import JobInputError
from worker.planner import SegmentPlan, plan_segments
from worker.request import JobRequest
from worker.templates import WorkflowTemplate

if TYPE_CHECKING:
    from worker.segments import SegmentResult
    from worker.stitch import StitchResult

log = logging.getLogger(__name__)


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


class ThroughputLog:
    """Seconds per frame of generation (one instance) and of the stitch, smoothed over recent jobs."""

    def __init__(self, smoothing: float = 0.5):
        self.smoothing = smoothing
        self._rates: dict[RateKey, _Rates] = {}
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

    def stitch_lead(self, key: RateKey) -> float:
        return self.throughput.stitch_lead(key) if self.fixed_lead is None else self.fixed_lead

    def plan(self, request: JobRequest, template: WorkflowTemplate, instances: int, total_frames: int) -> SegmentPlan:
        """As many segments as instances the request may use (and the length allows), overlapping by the
        request's or the template's overlap, on the template's frame grid."""
        parallelism = self.parallelism(request, instances)
        overlap = template.spec.overlap_frames if request.overlap_frames is None else request.overlap_frames
        lead = self.stitch_lead(RateKey.of(request, template))
        try:
            plan = plan_segments(total_frames, parallelism, overlap, template.spec.min_segment_frames,
                                 longest_segment(request, template), template.grid, lead)
        except ValueError as exc:  # only the request's own limits can make a split impossible
            raise JobInputError("max_segment_frames", f"{exc}: raise max_segment_frames or lower overlap_frames") from None
        log.info("plan: %d frames, %d segment(s), overlap %d, stitch lead %.3f", total_frames,
                 len(plan.segments), plan.overlap, lead)
        return plan

    @staticmethod
    def parallelism(request: JobRequest, instances: int) -> int:
        """How many instances the request may use at once."""
        parallelism = instances if request.use_multi_gpu else 1
        return parallelism if request.gpu_count is None else min(parallelism, request.gpu_count)

    def plans_by_gpu_count(self, request: JobRequest, template: WorkflowTemplate, instances: int,
                           total_frames: int) -> dict[int, SegmentPlan]:
        """The plan this job would get on 1, 2 ... `instances` instances (for estimates)."""
        return {count: self.plan(request.model_copy(update={"gpu_count": count, "use_multi_gpu": True}), template,
                                 count, total_frames) for count in range(1, max(1, instances) + 1)}

    def learned_s_per_frame(self, request: JobRequest, template: WorkflowTemplate) -> float | None:
        """One instance's generation seconds per frame on jobs like this one, if the worker has run any."""
        rates = self.throughput.rates(RateKey.of(request, template))
        return None if rates is None else rates[0]

    def learn(self, request: JobRequest, template: WorkflowTemplate, results: list[SegmentResult],
              stitched: StitchResult) -> None:
        """Records a finished job's speeds: ComfyUI seconds per generated frame, stitch seconds per output frame."""
        self.throughput.record(RateKey.of(request, template),
                               sum(r.comfy_seconds for r in results) / sum(r.segment.frames for r in results),
                               stitched.busy_seconds / stitched.frames)
