"""The second kind of job, on one page: one segment of another worker's job (worker/request/segment_job.py),
rendered on this worker's instances and sent back.

    segment job -> validate -> fetch its media -> run the segment (worker/render/segments.py) -> its video parts
                -> inline (base64) under the result limit, else the bucket, else the shared volume -> response

Meanwhile it watches its parent (worker/render/parent_watch.py): where the parent has ended, or runs again
elsewhere, nobody will take the result, and the segment job stops.

The parts are what the parent's stitch takes: the body as SaveSegmentVideo encoded it (copied into the
result untouched), the raw overlaps packed losslessly for the trip (x264 at CRF 0: every pixel as it was)
and the save node's measurements. Nothing is planned here and nothing is fanned out again.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import ffmpeg

from comfy_manager import CancelEvent, InstancePool, NoInstanceLeft
from worker.job import job_folder
from worker.media import bucket
from worker.media.ffmpeg import Limits, run
from worker.media.inputs import fetch_inputs
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.progress.tracker import JobProgressTracker, ProgressSink
from worker.render.parent_watch import ParentWatch, endpoint_status
from worker.render.segments import RenderJob, SegmentResult, run_segment
from worker.request.errors import JobCancelled, JobFailed, JobInputError, WorkerUnhealthy
from worker.request.segment_job import RESULT_KEY, SegmentJob, parse_segment_job
from worker.request.settings import WorkerSettings
from worker.templates.template import choose_template

log = logging.getLogger(__name__)
LOSSLESS = {"vcodec": "libx264", "preset": "ultrafast", "crf": 0, "pix_fmt": "yuv420p"}


def run_segment_job(job_input: dict, pool: InstancePool, settings: WorkerSettings, job_id: str | None = None,
                    on_progress: ProgressSink | None = None, cancel: threading.Event | None = None) -> dict:
    """Renders the segment job in `job_input` and returns {"segment_result": {...}}: where its video parts are
    (inline, bucket URL or volume path), which instance made it and how long it took. Raises JobInputError,
    JobFailed or JobCancelled as run_job does."""
    started = time.monotonic()
    try:
        pool.check_serving()
    except NoInstanceLeft as exc:
        raise WorkerUnhealthy(str(exc)) from None
    job, request = parse_segment_job(job_input)
    template = choose_template(request, settings)
    cancel = cancel or CancelEvent()
    limits = Limits.of(settings, cancel)
    plan = SegmentPlan(job.segments[-1][1], _overlap(job),
                       tuple(Segment(i, start, end) for i, (start, end) in enumerate(job.segments)))
    segment = plan.segments[job.index]
    spec = template.spec
    if segment.frames > spec.max_segment_frames:
        raise JobInputError("segment_job.segments", f"segment {segment.index} has {segment.frames} frames; workflow "
                                                    f"{template.name!r} renders at most {spec.max_segment_frames} a "
                                                    "segment")
    log.info("segment job %s: segment %d (%s) of job %s from %s", job_id, segment.index, segment.describe(),
             job.parent_job, job.parent_worker or "another worker")
    watch = _parent_watch(job, settings, cancel)
    try:
        with watch, job_folder(settings, job_id) as (job_id, work_dir), \
                JobProgressTracker(on_progress, started, job_id, settings.progress_interval_s,
                                   worker=_pod_id(settings)) as progress:
            inputs = fetch_inputs(request, settings, work_dir, limits)
            if cancel.is_set():  # the inputs' downloads do not watch it
                raise JobCancelled("the job was cancelled")
            files: dict[str, Path] = dict(zip(("audio", "audio_2"), inputs.audio_tracks))
            if inputs.video is not None:
                files["video"] = inputs.video.path
            else:
                files["image"] = inputs.image
            progress.planned(SegmentPlan(plan.total_frames, plan.overlap, (segment,)), template, None)
            progress.stage("generating")
            render = RenderJob.of(f"{job.parent_job}-{job_id}", request, template, pool, work_dir, progress, cancel,
                                  settings)
            result = run_segment(render, plan, segment, files)
            progress.segment_done(segment.index)
            progress.stage("delivering")
            parts = _pack(result, work_dir, job_id, settings, limits)
            progress.finish()
    except JobCancelled:
        if getattr(watch, "reason", None):  # nobody will read this segment: said as such, not as a cancel
            raise JobCancelled(f"segment job stopped: {watch.reason}") from None
        raise
    log.info("segment job %s done: segment %d on %s in %.1f s", job_id, segment.index, result.instance,
             time.monotonic() - started)
    return {RESULT_KEY: {
        "index": segment.index, "worker": _pod_id(settings), "instance": result.instance,
        "gpu": result.gpu, "seconds": round(result.seconds, 3), "comfy_seconds": round(result.comfy_seconds, 3),
        "node_seconds": result.node_seconds, "attempts": result.attempts, "device_settings": result.device_settings,
        "cold": result.cold, "split": result.video.split, "parts": parts}}


def _parent_watch(job: SegmentJob, settings: WorkerSettings, cancel: threading.Event):
    """The watch on the parent job (worker/render/parent_watch.py), where this worker can ask the endpoint."""
    if not (settings.runpod_api_key and settings.runpod_endpoint_id and settings.fanout_parent_check_s > 0):
        return nullcontext()
    return ParentWatch(job.parent_job, job.parent_worker,
                       endpoint_status(settings.runpod_endpoint_id, settings.runpod_api_key), cancel,
                       settings.fanout_parent_check_s, settings.fanout_stall_s)


def _pod_id(settings: WorkerSettings) -> str:
    return settings.runpod_pod_id or "worker"


def _overlap(job: SegmentJob) -> int:
    """The plan's overlap: the largest any two neighbours share (0 for one segment)."""
    return max((prev[1] - nxt[0] for prev, nxt in zip(job.segments, job.segments[1:])), default=0)


def _pack(result: SegmentResult, work_dir: Path, job_id: str, settings: WorkerSettings, limits: Limits) -> dict:
    """The segment's files for the trip back: raw overlaps packed losslessly; all inline where they fit the
    result limit (MAX_RESPONSE_MB), else uploaded to the bucket, else written to the shared volume."""
    video = result.video
    files: dict[str, Path] = {}
    for part in ("head", "body", "tail"):
        path = getattr(video, part)
        if path is None:
            continue
        if path.suffix == ".y4m":  # raw frames: 15x larger than lossless x264, and bit-exact again once decoded
            packed = work_dir / f"{path.stem}_lossless.mp4"
            run(ffmpeg.input(str(path)).video.output(str(packed), **LOSSLESS), f"pack the {part} of the segment",
                limits=limits)
            path = packed
        files[part] = path
    if video.stats is not None:
        files["stats"] = video.stats
    total = sum(p.stat().st_size for p in files.values())
    if total * 4 / 3 + 64 * 1024 <= settings.max_response_bytes:
        return {part: {"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for part, p in files.items()}
    if settings.bucket_configured:
        placed = {}
        for part, path in files.items():  # the parent fetches them with its own credentials, then removes them
            key = f"segments/{job_id}/{path.name}"
            bucket.put_file(path, key, settings)
            placed[part] = {"name": path.name, "key": key}
        return placed
    folder = settings.output_volume_dir / "segments" / job_id
    if not settings.output_volume_dir.parent.exists():
        raise JobFailed(f"the segment's video ({total / 2**20:.1f} MB) does not fit a result (MAX_RESPONSE_MB) and "
                        "there is neither a bucket (BUCKET_*) nor a network volume to put it on")
    folder.mkdir(parents=True, exist_ok=True)
    placed = {}
    for part, path in files.items():
        dest = folder / path.name
        dest.write_bytes(path.read_bytes())
        placed[part] = {"name": path.name, "path": str(dest)}
    return placed
