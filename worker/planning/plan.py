"""The one planning entry point: plan_job() turns a request, its template, the lanes that can run segments
and what the worker has learned into the whole plan of a job.

A lane is one place where one segment runs at a time: today a local ComfyUI instance with its memory budget.
The plan has:
- the segments: as many as lanes the request may use (and the length allows), overlapping by the request's
  or the template's overlap, on the template's frame grid (worker/planning/segment_plan.py); none longer than
  fits in the lanes' memory (worker/planning/memory.py), a cap computed once here;
- a stitch lead: if every segment ended at the same moment, the whole stitch would come after generation;
  making each segment a little shorter than the next lets the stitch of the earlier ones run meanwhile. The
  right ratio is the stitch's cost per frame over one instance's generation cost per frame, learned from
  finished jobs of the same kind (worker/planning/learned.py); 0 before the first (STITCH_LEAD fixes it);
- seam placement: each seam moved toward a pause in the job's audio (worker/planning/seam_placement.py)
  within SEAM_BUDGET_PERCENT of the job's generation time and what fits in memory (skipped without audio
  levels: the dry run);
- the estimate for 1..N lanes (worker/planning/estimate.py), from the same cap and lead.
A job whose shortest possible segment would not fit, or whose limits leave no split, is refused here, before
any work, with the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worker.planning.estimate import Estimate, assign_lanes, estimate, windows
from worker.planning.learned import Learned, LearnedRates
from worker.planning.memory import FrameCost, InstanceBudget, MemoryLimit, describe_bytes, frames_that_fit, will_not_fit
from worker.planning.seam_placement import SeamPlacement, SeamSearch, place_seams
from worker.planning.segment_plan import SegmentPlan, plan_segments
from worker.request.errors import JobInputError
from worker.request.job_request import JobRequest
from worker.templates.template import WorkflowTemplate

log = logging.getLogger(__name__)
SEAM_SEARCH_S = 2.0  # how far (seconds of video) a seam may move either way toward a pause


@dataclass(frozen=True)
class Lane:
    """One place where one segment runs at a time: a local ComfyUI instance, with its memory for a segment
    (None: not known, nothing caps the segments it runs), or another worker of the endpoint (remote: a
    segment job there starts cold, start_s before its first window)."""

    name: str
    budget: InstanceBudget | None = None
    remote: bool = False
    start_s: float = 0.0


def local_lanes(budgets: Sequence[InstanceBudget]) -> list[Lane]:
    """One lane per local instance in service, from its budget (Learned.memory_budgets)."""
    return [Lane(budget.name, budget) for budget in budgets]


def remote_lanes(count: int, start_s: float) -> list[Lane]:
    """`count` other workers of the endpoint, each starting in start_s (FANOUT_COLD_START_S plus the
    template's model loading)."""
    return [Lane(f"worker{i + 1}", remote=True, start_s=start_s) for i in range(count)]


@dataclass(frozen=True)
class JobPlan:
    """Everything planned for one job."""

    segments: SegmentPlan  # what runs: the balanced plan with its seams placed
    placement: SeamPlacement  # how the seams moved from the balanced plan (none moved without audio levels)
    parallelism: int  # lanes the segments run on at once, other workers included
    remote: frozenset[int]  # the segments sent to other workers (each to the lane free first)
    workers: int  # other workers the job may use at once (segment jobs in flight)
    estimate: Estimate | None  # None: no speed known (the template declares none, the worker has run none)
    learned: LearnedRates | None  # what jobs of this kind took, for the progress ETA
    memory_cap: MemoryLimit | None  # the longest segment that fits every lane (None: no limit known)

    @property
    def balanced(self) -> SegmentPlan:
        return self.placement.balanced


def plan_job(request: JobRequest, template: WorkflowTemplate, total_frames: int, lanes: Sequence[Lane],
             learned: Learned, levels_db: np.ndarray | None = None, seam_budget_percent: float = 0.0) -> JobPlan:
    """The whole plan of a job of `total_frames` frames on `lanes`; `levels_db`: the audio's level at every
    output frame (worker/media/loudness.py), which seam placement needs; JobInputError when the job cannot be
    split within the request's limits or the lanes' memory."""
    local = [lane for lane in lanes if not lane.remote]
    others = [lane for lane in lanes if lane.remote][:len(lanes) if request.workers is None else request.workers]
    others = others if request.use_multi_gpu else []  # single_gpu: one instance, no other worker
    parallelism = parallelism_of(request, len(local))
    overlap = template.spec.overlap_frames if request.overlap_frames is None else request.overlap_frames
    longest = longest_segment(request, template)
    if longest <= 2 * overlap and total_frames > 2 * longest - overlap:
        # The job needs a middle segment, which holds two overlaps: it has no room for them.
        raise JobInputError("max_segment_frames", f"must be more than twice the overlap ({overlap} frames) "
                                                  f"so that segments have room for both; got {longest}")
    cost = learned.frame_cost(request, template)
    cap = memory_cap(request, template, cost, [lane.budget for lane in lanes if lane.budget is not None],
                     total_frames, overlap)
    if cap is not None:
        longest = min(longest, cap.frames)
    lead = learned.stitch_lead(request, template)

    def split(lanes_used: int) -> SegmentPlan:
        plan = _split(request, total_frames, lanes_used, overlap, template, longest, lead)
        if cap is not None and max(s.frames for s in plan.segments) > cap.frames:
            raise will_not_fit(_frame_of(request, template), cap, max(s.frames for s in plan.segments), overlap,
                               cost.source)
        return plan

    start_s = max((lane.start_s for lane in others), default=0.0)
    per_frame = learned.learned_s_per_frame(request, template)
    by_lane_count = {count: split(count) for count in range(1, max(len(local), parallelism) + len(others) + 1)}
    expected = estimate(request, template, by_lane_count, parallelism, per_frame, local=parallelism, remote_start_s=start_s)
    if expected is None:  # no speed known: whether another worker pays off cannot be told; only if asked for
        workers = len(others) if request.workers else 0
    else:
        workers = pays_off(expected, parallelism, len(others))
    if workers:
        expected = estimate(request, template, by_lane_count, parallelism + workers, per_frame, local=parallelism,
                            remote_start_s=start_s)
    balanced = by_lane_count[parallelism + workers]
    # Which segments the other workers take: each segment on the lane free first, by the speed where one is
    # known (else by frames), the other workers starting start_s later.
    pace = expected.seconds_per_window if expected is not None else None
    durations = [windows(template, s) * pace if pace else float(s.frames) for s in balanced.segments]
    away, _ = assign_lanes(durations, parallelism, workers, start_s if pace else 0.0)
    remote = frozenset(i for i, there in enumerate(away) if there)
    workers = min(workers, len(remote))
    if levels_db is None:
        placement = SeamPlacement(balanced, balanced, (0,) * (len(balanced.segments) - 1), 0.0, 0.0)
    else:
        placement = place_seams(balanced, SeamSearch(
            levels_db, request.seams.span(balanced.overlap), seam_budget_percent / 100, parallelism, template.grid,
            max(template.spec.min_segment_frames, 2 * balanced.overlap), longest, radius=round(SEAM_SEARCH_S * request.fps)))
    plan = placement.plan
    log.info("plan: %d frames in %d segment(s) on %d instance(s)%s, overlap %d, stitch lead %.3f%s%s", total_frames,
             len(plan.segments), parallelism, f" and {workers} other worker(s)" if workers else "", plan.overlap, lead,
             f", memory allows {cap.frames} frames per segment" if cap is not None else "",
             f"; seams moved toward quiet audio by {list(placement.shifts)} frames (cost {placement.cost_frames:.1f} "
             f"of a budget of {placement.budget_frames:.1f})" if any(placement.shifts) else "")
    return JobPlan(plan, placement, parallelism + workers, remote, workers, expected, learned.rates(request, template),
                   cap)


def pays_off(expected: Estimate, local: int, most: int) -> int:
    """How many other workers (0..most) make the job end soonest, by the estimate for each lane count; of
    counts within 5% of the soonest, the fewest (each worker costs GPU time to start)."""
    wall = {o.gpus: o.wall_s for o in expected.per_gpu_count}
    options = [r for r in range(most + 1) if local + r in wall]
    if not options:
        return 0
    best = min(wall[local + r] for r in options)
    return min(r for r in options if wall[local + r] <= best * 1.05)


def parallelism_of(request: JobRequest, lanes: int) -> int:
    """How many lanes the request may use at once."""
    parallelism = lanes if request.use_multi_gpu else 1
    return max(1, parallelism if request.gpu_count is None else min(parallelism, request.gpu_count))


def longest_segment(request: JobRequest, template: WorkflowTemplate) -> int:
    """The template's longest segment, or the request's max_segment_frames where that is shorter."""
    spec = template.spec
    if request.max_segment_frames is None:
        return spec.max_segment_frames
    if request.max_segment_frames < spec.min_segment_frames:
        raise JobInputError("max_segment_frames", f"workflow {template.name!r} needs segments of at least "
                                                  f"{spec.min_segment_frames} frames (got {request.max_segment_frames})")
    return min(spec.max_segment_frames, request.max_segment_frames)


def memory_cap(request: JobRequest, template: WorkflowTemplate, cost: FrameCost, budgets: Sequence[InstanceBudget],
               total_frames: int, overlap: int) -> MemoryLimit | None:
    """The longest segment that fits in every lane's budget (None: no limit known, or the whole job fits in
    one). JobInputError with the numbers when even the workflow's shortest segment does not fit."""
    fits = frames_that_fit(cost, list(budgets))
    if fits is None or fits.frames >= total_frames:
        return None
    # Room for a segment's two overlaps and one frame of its own (plan_segments' least), else nothing fits.
    shortest = max(template.spec.min_segment_frames, 2 * overlap + 1)
    if fits.frames < shortest:
        raise will_not_fit(_frame_of(request, template), fits, shortest, overlap, cost.source)
    log.debug("memory allows %d frames per segment (%s of %s per frame, %s; %s for frames on %s)", fits.frames,
              describe_bytes(fits.per_frame_bytes), fits.memory, cost.source, describe_bytes(fits.for_frames_bytes),
              fits.instance)
    return fits


def _split(request: JobRequest, total_frames: int, lanes: int, overlap: int, template: WorkflowTemplate,
           longest: int, lead: float) -> SegmentPlan:
    try:
        return plan_segments(total_frames, lanes, overlap, template.spec.min_segment_frames, longest, template.grid,
                             lead)
    except ValueError as exc:  # only the request's own limits can make a split impossible
        raise JobInputError("max_segment_frames", f"{exc}: raise max_segment_frames or lower overlap_frames") from None


def _frame_of(request: JobRequest, template: WorkflowTemplate) -> str:
    return f"a {request.width}x{request.height} frame of workflow {template.name!r}"
