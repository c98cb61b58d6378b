"""The job's `output` on success, and its assembly from what the job's steps produced."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from worker.planning.estimate import Estimate, windows
from worker.request.job_request import JobRequest
from worker.templates.template import WorkflowTemplate

if TYPE_CHECKING:
    from worker.output.delivery import Delivery
    from worker.output.stitch import StitchResult
    from worker.planning.plan import JobPlan
    from worker.render.segments import SegmentResult


class SegmentReport(BaseModel):
    index: int
    instance: str  # e.g. gpu1:8189 or cpu0:8188
    gpu: int | None
    worker: str | None = None  # the endpoint's other worker that rendered it (its RUNPOD_POD_ID); None: this one
    start_frame: int
    end_frame: int  # exclusive
    frames: int
    seconds: float  # wall time of the segment on its instance: upload, ComfyUI, taking its video
    comfy_seconds: float  # time ComfyUI took for the prompt
    node_seconds: dict[str, float] = {}  # "node id ClassType" -> seconds it ran (where the ComfyUI time went)
    attempts: int  # 1, or more when an instance died or the segment overran its deadline
    device_settings: str | None = None  # the template's settings row for this instance's device, e.g. "gpu>=80GB"
    # When the segment's successful try began and its video was on disk, in seconds after the job began
    # (draw the job as a timeline: client/timeline.py).
    started_s: float = 0.0
    finished_s: float = 0.0
    ram_peak_mb: float | None = None  # the instance's peak anonymous memory (RSS less mapped files) during the segment


class SeamReport(BaseModel):
    """One seam, where segments index and index + 1 meet (README: "Reading the seam report"). Frames are
    output frames; differences are in 8-bit units of the Y, U and V samples."""

    index: int
    overlap_start_frame: int
    overlap_end_frame: int  # exclusive
    moved_frames: int  # how far seam placement moved the overlap toward quiet audio (negative: earlier)
    blend_start_frame: int
    blend_end_frame: int  # exclusive
    audio_db: float | None  # the audio over the blend against the job's median level, dB (negative: quieter)
    disagreement: float  # the two generations' mean absolute difference over the overlap
    disagreement_at_blend: float  # ... over the blended frames
    color_difference_before: float  # the sides' largest mean Y/U/V difference over the overlap, unmatched
    color_difference_after: float  # ... as blended (after colour matching, where it is on)
    change_at_seam: float | None  # the largest frame-to-frame change across the overlap's output


class SeamSummary(BaseModel):
    """How the job's seams were placed and blended, and what the rest of the video is compared with."""

    budget_frames: float  # what seam placement could spend (frames of one instance's generation)
    cost_frames: float  # what it spent: later segment finishes plus frames generated and thrown away
    blend: str  # focused or linear
    blend_frames: int  # the focused blend's length (capped at the overlap)
    color_matched: bool  # every segment matched to the colour reference by SaveSegmentVideo
    audio_median_db: float  # the job's median audio level per frame, dBFS
    change_median: float | None  # the median frame-to-frame change inside the segments' bodies


class Timings(BaseModel):
    prepare: float  # fetch, probe and cut the inputs
    generate: float  # all segments, in parallel
    stitch: float  # from the last segment done to the stitched mp4 (the stitch starts with the first segment done)
    deliver: float  # hand the result over: base64, upload to the bucket or write to the volume
    total: float

    @classmethod
    def between(cls, started: float, prepared: float, generated: float, stitched: float, delivered: float) -> Timings:
        """From the moments (time.monotonic()) each phase ended."""
        return cls(prepare=round(prepared - started, 3), generate=round(generated - prepared, 3),
                   stitch=round(stitched - generated, 3), deliver=round(delivered - stitched, 3),
                   total=round(delivered - started, 3))


class JobResponse(BaseModel):
    success: bool = True
    message: str
    workflow: str
    quality: str | None = None  # the template's preset used (request.quality or the template's default)
    video: str | None = None  # base64 mp4 (output.destination = base64)
    video_url: str | None = None  # bucket URL (output.destination = bucket)
    video_path: str | None = None  # file on the volume (output.destination = volume)
    video_bytes: int
    gpu_count: int  # instances the job used
    instances_available: int
    segments_processed: int
    frames: int
    fps: float
    duration_s: float
    overlap_frames: int
    # Frames taken into the result as the segments' workflows encoded them (SaveSegmentVideo's split form:
    # each segment's body); the stitch encoded the rest (the cross-faded overlaps, or everything).
    frames_copied: int = 0
    segments: list[SegmentReport]
    seams: list[SeamReport] = []
    seam_summary: SeamSummary | None = None
    # Frames of the result whose picture is one colour (black, blank): a sign that the model failed there; None
    # where the segments' save nodes did not measure it. Said in `warnings` too.
    flat_frames: int | None = None
    warnings: list[str] = []  # what a person should look at although the job succeeded
    timings: Timings
    estimate: Estimate | None = None  # what the worker expected for this plan, before it ran (timings: what it took)


class PlannedSegment(BaseModel):
    index: int
    start_frame: int
    end_frame: int  # exclusive
    frames: int
    windows: int  # what the template samples for it (InfiniteTalk: 81-frame windows, then 72 frames each)


class DryRunResponse(BaseModel):
    """The answer to a request with dry_run: true: the plan and what it would cost; nothing ran."""

    dry_run: bool = True
    success: bool = True
    workflow: str
    quality: str | None
    frames: int
    fps: float
    duration_s: float
    instances_available: int
    instance_names: list[str] = []  # e.g. cpu:8188, gpu0:8188: what the plan's lanes are
    overlap_frames: int
    segments: list[PlannedSegment]
    estimate: Estimate | None  # None: the template declares no speed and this worker has run no such job


def build_dry_run(request: JobRequest, template: WorkflowTemplate, planned: JobPlan, instances: int,
                  names: list[str] | None = None) -> DryRunResponse:
    """The dry run's answer: the balanced plan (seams are placed only with the audio's levels) and its estimate;
    `names`: the lanes' (instances') names."""
    plan = planned.balanced
    return DryRunResponse(
        workflow=template.name, quality=request.quality or template.spec.default_preset,
        frames=plan.total_frames, fps=request.fps, duration_s=round(plan.total_frames / request.fps, 4),
        instances_available=instances, instance_names=names or [], overlap_frames=plan.overlap,
        estimate=planned.estimate,
        segments=[PlannedSegment(index=s.index, start_frame=s.start, end_frame=s.end, frames=s.frames,
                                 windows=windows(template, s)) for s in plan.segments])


def build_response(request: JobRequest, template: WorkflowTemplate, planned: JobPlan, results: list[SegmentResult],
                   stitched: StitchResult, delivery: Delivery, timings: Timings, audio_median_db: float,
                   instances: int, started_at: float) -> JobResponse:
    """The response of a finished job; `instances`: in service when it was planned; `started_at`: when it began
    (time.monotonic(); the segments' times are relative to it)."""
    placement = planned.placement
    plan = placement.plan
    return JobResponse(
        message=f"{plan.total_frames} frames in {len(plan.segments)} segment(s)",
        workflow=template.name,
        quality=request.quality or template.spec.default_preset,
        video=delivery.video,
        video_url=delivery.video_url,
        video_path=delivery.video_path,
        video_bytes=stitched.path.stat().st_size,
        gpu_count=len({(r.worker, r.instance) for r in results}),
        instances_available=instances,
        segments_processed=len(results),
        frames=plan.total_frames,
        fps=request.fps,
        duration_s=round(plan.total_frames / request.fps, 4),
        overlap_frames=plan.overlap,
        frames_copied=stitched.frames_copied,
        segments=[SegmentReport(index=r.segment.index, instance=r.instance, gpu=r.gpu, worker=r.worker,
                                start_frame=r.segment.start, end_frame=r.segment.end, frames=r.segment.frames,
                                seconds=round(r.seconds, 3), comfy_seconds=round(r.comfy_seconds, 3),
                                node_seconds=r.node_seconds, attempts=r.attempts,
                                device_settings=r.device_settings,
                                started_s=round(r.started_at - started_at, 3),
                                finished_s=round(r.finished_at - started_at, 3),
                                ram_peak_mb=round(r.memory.peak_bytes / 2**20, 1) if r.memory else None)
                  for r in results],
        seams=[SeamReport(index=m.index, overlap_start_frame=m.overlap_start, overlap_end_frame=m.overlap_end,
                          moved_frames=placement.shifts[m.index], blend_start_frame=m.blend_start,
                          blend_end_frame=m.blend_end, audio_db=m.audio_db, disagreement=m.disagreement_overlap,
                          disagreement_at_blend=m.disagreement_blend, color_difference_before=m.color_before,
                          color_difference_after=m.color_after, change_at_seam=m.change_at_seam)
               for m in stitched.seams],
        seam_summary=SeamSummary(budget_frames=placement.budget_frames, cost_frames=placement.cost_frames,
                                 blend=request.seams.blend, blend_frames=request.seams.span(plan.overlap), color_matched=stitched.color_matched,
                                 audio_median_db=round(audio_median_db, 1), change_median=stitched.change_median),
        flat_frames=stitched.flat_frames,
        warnings=output_warnings(template, stitched),
        timings=timings,
        estimate=planned.estimate,
    )


def output_warnings(template: WorkflowTemplate, stitched: StitchResult) -> list[str]:
    """What the output checks found: flat frames (a model's failure shows as black or one-colour frames)."""
    if not stitched.flat_frames:
        return []
    warning = (f"{stitched.flat_frames} of {stitched.frames} frames are one colour (black or blank): check the "
               "video; where the inputs are not blank, the model failed on those frames")
    if "attention_mode" in template.settable_params:
        warning += ("; if it ran with fp8 attention (attention_mode cudnn_fp8, InfiniteTalk's default on H100 and "
                    'H200), template_params {"attention_mode": "sdpa"} runs bf16 attention')
    return [warning]
