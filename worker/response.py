"""The job's `output` on success."""

from __future__ import annotations

from pydantic import BaseModel


class SegmentReport(BaseModel):
    index: int
    instance: str  # e.g. gpu1:8189 or cpu0:8188
    gpu: int | None
    start_frame: int
    end_frame: int  # exclusive
    frames: int
    seconds: float  # wall time of the segment on its instance: upload, ComfyUI, taking its video
    comfy_seconds: float  # time ComfyUI took for the prompt
    node_seconds: dict[str, float] = {}  # "node id ClassType" -> seconds it ran (where the ComfyUI time went)
    attempts: int  # 1, or more when an instance died or the segment overran its deadline


class Timings(BaseModel):
    prepare: float  # fetch, probe and cut the inputs
    generate: float  # all segments, in parallel
    stitch: float  # from the last segment done to the stitched mp4 (the stitch starts with the first segment done)
    deliver: float  # hand the result over: base64, upload to the bucket or write to the volume
    total: float


class JobResponse(BaseModel):
    success: bool = True
    message: str
    workflow: str
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
    timings: Timings
