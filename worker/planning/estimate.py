"""How long a job will take: its plan's windows at a measured or learned speed.

A template may declare its speed (`speed` in its bindings: seconds a window per preset, measured on a named
GPU at a named size); a worker that has run jobs of the same template, preset, size and steps knows its own
speed (worker/planning/learned.py) and uses that instead. A window is one step of the template's frame grid
(InfiniteTalk: 81 frames, then 72 new ones each), or one frame where the template has no grid. The estimate
assumes warm instances (model loading is the template's `load_s`, paid once per instance, not per job) and
scales a measured speed linearly with pixels and steps: a rough guide away from the measured size.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from pydantic import BaseModel

from worker.planning.segment_plan import Segment, SegmentPlan

if TYPE_CHECKING:
    from worker.request.job_request import JobRequest
    from worker.templates.template import WorkflowTemplate


class GpuCountEstimate(BaseModel):
    gpus: int  # lanes: this worker's instances, and other workers of the endpoint (workers of them)
    workers: int = 0  # of those, other workers (each starting cold: remote_start_s)
    segments: int
    wall_s: float  # generation until the last segment is done, instances warm
    gpu_s: float  # GPU time summed over instances


class Estimate(BaseModel):
    basis: str  # where the speed comes from
    seconds_per_window: float
    load_s: float | None = None  # a cold instance's model loading, once
    wall_s: float  # for this job's plan
    gpu_s: float
    per_gpu_count: list[GpuCountEstimate] = []


def windows(template: WorkflowTemplate, segment: Segment) -> int:
    """The windows the template samples for a segment: steps of its frame grid (frames, without a grid)."""
    grid = template.grid
    generated = grid.round_up(segment.frames)
    if grid.quantum == 1:
        return generated
    return max(1, (generated - grid.offset) // grid.quantum)


def seconds_per_window(request: JobRequest, template: WorkflowTemplate,
                       learned_s_per_frame: float | None) -> tuple[float, str] | None:
    """(seconds a window, basis): this worker's own speed if it has one, else the template's measured one
    scaled to the request's size and steps; None where neither exists."""
    grid = template.grid
    frames_per_window = grid.quantum if grid.quantum > 1 else 1
    if learned_s_per_frame is not None:
        return learned_s_per_frame * frames_per_window, "learned from this worker's jobs"
    speed = template.spec.speed
    preset = request.quality or template.spec.default_preset or "default"
    if speed is None or preset not in speed.seconds_per_window:
        return None
    seconds = speed.seconds_per_window[preset]
    seconds *= request.width * request.height / speed.pixels
    preset_steps = (template.spec.presets.get(preset) or {}).get("steps") or template.spec.params.get("steps")
    if request.steps and preset_steps:
        seconds *= request.steps / preset_steps
    return seconds, f"measured on {speed.measured_on}, scaled to {request.width}x{request.height}"


def assign_lanes(durations: list[float], local: int, remote: int = 0, start_s: float = 0.0) -> tuple[list[bool], float]:
    """Each segment, in plan order, on the lane that is free first: `local` instances from time 0, `remote`
    other workers from start_s (their cold start). Returns (per segment: on another worker?, when the last
    one ends)."""
    lanes = [(0.0, False)] * max(1, local) + [(start_s, True)] * remote
    heapq.heapify(lanes)
    away = []
    for duration in durations:
        free, is_remote = heapq.heappop(lanes)
        away.append(is_remote)
        heapq.heappush(lanes, (free + duration, is_remote))
    return away, max(free for free, _ in lanes) if durations else 0.0


def makespan(durations: list[float], instances: int) -> float:
    """When the last of the segments ends, each taken by the first free instance in plan order."""
    free = [0.0] * max(1, instances)
    for duration in durations:
        heapq.heapreplace(free, free[0] + duration)
    return max(free)


def estimate(request: JobRequest, template: WorkflowTemplate, plans: dict[int, SegmentPlan], gpus: int,
             learned_s_per_frame: float | None = None, local: int | None = None,
             remote_start_s: float = 0.0) -> Estimate | None:
    """The estimate for the plan of `gpus` lanes, with the other lane counts' plans beside it. Lanes past
    `local` (default: all local) are other workers, which start remote_start_s later (their GPU time counted
    too); each segment goes to the lane free first (assign_lanes)."""
    speed = seconds_per_window(request, template, learned_s_per_frame)
    if speed is None:
        return None
    per_window, basis = speed

    def for_plan(count: int, plan: SegmentPlan) -> GpuCountEstimate:
        durations = [windows(template, s) * per_window for s in plan.segments]
        own = count if local is None else min(count, local)
        remote, wall = assign_lanes(durations, own, count - own, remote_start_s)
        workers = min(count - own, sum(remote))  # other workers that get a segment
        return GpuCountEstimate(gpus=count, workers=workers, segments=len(plan.segments), wall_s=round(wall, 1),
                                gpu_s=round(sum(durations) + remote_start_s * workers, 1))

    options = [for_plan(count, plan) for count, plan in sorted(plans.items())]
    chosen = next(o for o in options if o.gpus == gpus)
    load = template.spec.speed.load_s if template.spec.speed else None
    return Estimate(basis=basis, seconds_per_window=round(per_window, 3), load_s=load, wall_s=chosen.wall_s,
                    gpu_s=chosen.gpu_s, per_gpu_count=options)
