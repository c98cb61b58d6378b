"""One job from request to response: validate, plan, run segments on ComfyUI in parallel, stitch.

run_job needs no runpod: tests and benchmarks call it directly with an InstancePool.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from comfy_manager import ComfyClient, ComfyInstance, InstancePool
from comfy_manager.client import (ComfyOutputFile, ConnectionLost, PromptCancelled, PromptFailed, PromptRejected,
                                  PromptTimedOut)
from worker import probe, segment_media
from worker.config import WorkerSettings
from worker.errors import JobCancelled, JobFailed, JobInputError, describe_validation_error
from worker.media_sources import fetch_media
from worker.outputs import check_deliverable, deliver
from worker.planner import Segment, SegmentPlan, plan_segments, total_frames_for
from worker.rates import RateKey, ThroughputLog
from worker.request import JobRequest
from worker.response import JobResponse, SegmentReport, Timings
from worker.segment_format import split_part
from worker.segment_video import SegmentVideo
from worker.stitch import OutputFormat, StitchResult, Stitcher
from worker.summary import format_summary
from worker.templates import WorkflowTemplate, available_templates

log = logging.getLogger(__name__)
THROUGHPUT = ThroughputLog()  # this worker's recent speeds, for planning (see worker/rates.py)

ProgressFn = Callable[[str], None]
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


@dataclass(frozen=True)
class PreparedInputs:
    """The job's media in its folder: what each segment is cut from, and the audio to mux."""

    audio_tracks: list[Path]
    final_audio: Path
    image: Path | None
    video: Path | None
    duration_s: float  # of the (longest) audio: the output's length
    video_duration_s: float = 0.0


@dataclass(frozen=True)
class JobContext:
    """What every step of one job needs."""

    request: JobRequest
    template: WorkflowTemplate
    pool: InstancePool
    settings: WorkerSettings
    job_id: str
    work_dir: Path
    progress: ProgressFn
    cancel: threading.Event


@dataclass(frozen=True)
class SegmentResult:
    segment: Segment
    video: SegmentVideo
    instance: ComfyInstance
    seconds: float
    comfy_seconds: float
    finished_at: float  # time.monotonic() when the segment's video was on disk
    attempts: int = 1
    node_seconds: dict[str, float] = field(default_factory=dict)  # "id ClassType" -> seconds


def parse_request(job_input: Any) -> JobRequest:
    if not isinstance(job_input, dict):
        raise JobInputError("input", "must be a JSON object")
    try:
        return JobRequest.model_validate(job_input)
    except ValidationError as exc:
        raise JobInputError("input", describe_validation_error(exc, list(JobRequest.model_fields))) from None


def choose_template(request: JobRequest, settings: WorkerSettings) -> WorkflowTemplate:
    templates = available_templates(settings.extra_workflow_dirs)
    name = request.workflow or settings.default_workflow(request.input_type, request.person_count)
    template = templates.get(name)
    if template is None:
        raise JobInputError("workflow", f"unknown workflow {name!r}; available: {', '.join(templates)}")
    if template.spec.input_type != request.input_type:
        raise JobInputError("input_type", f"workflow {name!r} takes input_type {template.spec.input_type!r}, "
                                          f"not {request.input_type!r}")
    if request.person_count not in template.spec.person_counts:
        raise JobInputError("person_count", f"workflow {name!r} supports {template.spec.person_counts}")
    return template


def run_job(job_input: Any, pool: InstancePool, settings: WorkerSettings, job_id: str | None = None,
            on_progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> dict:
    """Runs one job and returns the response as a dict; raises JobInputError, JobFailed or JobCancelled.

    Setting `cancel` stops the job: its prompts are interrupted and dequeued, its files removed.
    """
    started = time.monotonic()
    request = parse_request(job_input)
    template = choose_template(request, settings)
    job_id = _safe(job_id or uuid.uuid4().hex[:12])
    work_dir = settings.job_work_dir / f"{job_id}-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir(parents=True)
    ctx = JobContext(request, template, pool, settings, job_id, work_dir,
                     on_progress or (lambda message: None), cancel or threading.Event())
    try:
        inputs = prepare_inputs(request, work_dir, settings)
        total_frames = total_frames_for(inputs.duration_s, request.fps)
        check_deliverable(request.output.destination, output_format(request), total_frames, settings)
        plan = make_plan(request, template, pool, total_frames, settings)
        segment_inputs = cut_segment_inputs(request, plan, inputs, work_dir)
        prepared = time.monotonic()

        results, result = generate_and_stitch(ctx, plan, segment_inputs, inputs.final_audio)
        generated = max(r.finished_at for r in results)  # the stitch overlaps generation up to here
        stitched = time.monotonic()
        THROUGHPUT.record(rate_key(request, template),
                          sum(r.comfy_seconds for r in results) / sum(r.segment.frames for r in results),
                          result.busy_seconds / plan.total_frames)

        delivery = deliver(result.path, request.output.destination, job_id, settings)
        delivered = time.monotonic()
        response = JobResponse(
            message=f"{plan.total_frames} frames in {len(plan.segments)} segment(s)",
            workflow=template.name,
            video=delivery.video,
            video_url=delivery.video_url,
            video_path=delivery.video_path,
            video_bytes=result.path.stat().st_size,
            gpu_count=len({r.instance.name for r in results}),
            instances_available=pool.size,
            segments_processed=len(results),
            frames=plan.total_frames,
            fps=request.fps,
            duration_s=round(plan.total_frames / request.fps, 4),
            overlap_frames=plan.overlap,
            frames_copied=result.frames_copied,
            segments=[SegmentReport(index=r.segment.index, instance=r.instance.name, gpu=r.instance.gpu,
                                    start_frame=r.segment.start, end_frame=r.segment.end, frames=r.segment.frames,
                                    seconds=round(r.seconds, 3), comfy_seconds=round(r.comfy_seconds, 3),
                                    node_seconds=r.node_seconds, attempts=r.attempts)
                      for r in results],
            timings=Timings(prepare=round(prepared - started, 3), generate=round(generated - prepared, 3),
                            stitch=round(stitched - generated, 3), deliver=round(delivered - stitched, 3),
                            total=round(delivered - started, 3)),
        )
        log.info("job %s done\n%s", job_id, format_summary(response))
        return response.model_dump()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def prepare_inputs(request: JobRequest, work_dir: Path, settings: WorkerSettings) -> PreparedInputs:
    """Fetches every media field into the job folder and checks it is the kind of file it should be."""
    tracks = []
    for field in ("audio", "audio_2"):
        value = getattr(request, field)
        if value:
            path = fetch_media(field, value, work_dir / f"{field}.src", settings)
            info = probe.probe(field, path)
            probe.require_audio(field, info, settings.max_duration_s)
            tracks.append((path, info.duration_s))
    image = video = None
    video_duration_s = 0.0
    if request.input_type == "image":
        source = fetch_media("image", request.image, work_dir / "image.src", settings)
        probe.require_image("image", probe.probe("image", source))
        image = segment_media.image_to_png(source, work_dir / "image.png")
    else:
        video = fetch_media("video", request.video, work_dir / "video.src", settings)
        info = probe.probe("video", video)
        probe.require_video("video", info)
        video_duration_s = info.duration_s
    final_audio = tracks[0][0] if len(tracks) == 1 else segment_media.mix_audio(
        [t[0] for t in tracks], work_dir / "audio_mix.wav")
    return PreparedInputs([t[0] for t in tracks], final_audio, image, video, max(t[1] for t in tracks),
                          video_duration_s)


def rate_key(request: JobRequest, template: WorkflowTemplate) -> RateKey:
    return (template.name, request.width, request.height, request.steps)


def make_plan(request: JobRequest, template: WorkflowTemplate, pool: InstancePool, total_frames: int,
              settings: WorkerSettings) -> SegmentPlan:
    parallelism = pool.size if request.use_multi_gpu else 1
    if request.gpu_count is not None:
        parallelism = min(parallelism, request.gpu_count)
    overlap = template.spec.overlap_frames if request.overlap_frames is None else request.overlap_frames
    lead = THROUGHPUT.stitch_lead(rate_key(request, template)) if settings.stitch_lead is None else settings.stitch_lead
    plan = plan_segments(total_frames, parallelism, overlap, template.spec.min_segment_frames,
                         template.spec.max_segment_frames, template.grid, lead)
    log.info("plan: %d frames, %d segment(s), overlap %d, stitch lead %.3f", total_frames, len(plan.segments),
             plan.overlap, lead)
    return plan


def cut_segment_inputs(request: JobRequest, plan: SegmentPlan, inputs: PreparedInputs,
                       work_dir: Path) -> list[dict[str, Path]]:
    """Per segment, the files its workflow loads: its frames (video mode) and its slice of each audio."""
    video = inputs.video
    if video is not None and inputs.video_duration_s * request.fps < plan.total_frames - 0.5:
        log.info("video (%.2f s) is shorter than the audio (%.2f s): looping it",
                 inputs.video_duration_s, inputs.duration_s)
        video = segment_media.loop_video(video, work_dir / "video_looped.mp4", request.fps, plan.total_frames)

    def cut(segment: Segment) -> dict[str, Path]:
        files: dict[str, Path] = {}
        # Half a frame more audio, so a workflow that counts frames from the audio never comes up short.
        start_s, length_s = segment.start / request.fps, (segment.frames + 0.5) / request.fps
        for slot, track in zip(("audio", "audio_2"), inputs.audio_tracks):
            files[slot] = segment_media.cut_audio(track, work_dir / f"seg{segment.index}_{slot}.wav", start_s, length_s)
        if video is not None:
            files["video"] = segment_media.cut_video(video, work_dir / f"seg{segment.index}_video.mp4", segment,
                                                     request.fps, request.width, request.height)
        else:
            files["image"] = inputs.image
        return files

    with ThreadPoolExecutor(max_workers=min(4, len(plan.segments))) as executor:
        return list(executor.map(cut, plan.segments))


def generate_and_stitch(ctx: JobContext, plan: SegmentPlan, segment_inputs: list[dict[str, Path]],
                        final_audio: Path) -> tuple[list[SegmentResult], StitchResult]:
    """Runs every segment on a free instance, all at once; each finished segment goes straight to the
    stitcher, which encodes its chunks while the other segments are still generating."""
    done = 0
    lock = threading.Lock()

    def run(segment: Segment) -> SegmentResult:
        nonlocal done
        result = run_segment(ctx, plan, segment, segment_inputs[segment.index])
        with lock:
            done += 1
            ctx.progress(f"segment {done}/{len(plan.segments)} done")
        return result

    ctx.progress(f"generating {len(plan.segments)} segment(s)")
    request = ctx.request
    stitcher = Stitcher(plan, ctx.work_dir / "chunks", final_audio, output_format(request))
    with ThreadPoolExecutor(max_workers=len(plan.segments)) as executor:
        futures = [executor.submit(run, segment) for segment in plan.segments]
        try:
            for future in as_completed(futures):
                if future.exception() is not None:
                    raise _root_failure(futures, ctx)
                result = future.result()
                stitcher.add_segment(result.segment.index, result.video)
            stitched = stitcher.finish(ctx.work_dir / "result.mp4")
        except BaseException:
            ctx.cancel.set()  # stop the other segments instead of finishing useless work
            stitcher.close()
            raise
        return [f.result() for f in futures], stitched


def _root_failure(futures: list[Future], ctx: JobContext) -> BaseException:
    """The first real failure among the segments, once the others have stopped (the cancellations it
    caused in them are not the story)."""
    ctx.cancel.set()
    wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    return next((e for e in errors if not isinstance(e, JobCancelled)), errors[0])


def run_segment(ctx: JobContext, plan: SegmentPlan, segment: Segment, files: dict[str, Path]) -> SegmentResult:
    """Runs one segment, retrying on another instance when its instance dies or it overruns its deadline."""
    attempts = ctx.settings.segment_retries + 1
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        instance = _acquire(ctx)
        healthy = True
        try:
            return replace(attempt_segment(ctx, plan, segment, files, instance), attempts=attempt)
        except (ConnectionLost, PromptTimedOut) as exc:
            healthy = isinstance(exc, PromptTimedOut) and instance.is_alive()
            failures.append(f"attempt {attempt} on {instance.name}: {exc}")
            log.warning("%s: segment %d attempt %d/%d failed: %s", instance.name.upper(), segment.index,
                        attempt, attempts, exc)
            last_instance, last_tail = instance, instance.log_tail(15)
        finally:
            if healthy:
                ctx.pool.release(instance)
            else:
                ctx.pool.recover(instance)  # restarted in the background, lent again once ready
    gpu = "CPU" if last_instance.gpu is None else f"GPU {last_instance.gpu}"
    raise JobFailed(f"segment {segment.index} ({segment.describe()}) failed {attempts} times; last on "
                    f"{last_instance.name} ({gpu}). " + " | ".join(failures) +
                    f"\nlast log lines of {last_instance.name}:\n{last_tail}")


def _acquire(ctx: JobContext) -> ComfyInstance:
    while True:
        if ctx.cancel.is_set():
            raise JobCancelled("the job was cancelled")
        try:
            return ctx.pool.acquire(timeout_s=0.5)
        except TimeoutError:
            continue


def attempt_segment(ctx: JobContext, plan: SegmentPlan, segment: Segment, files: dict[str, Path],
                    instance: ComfyInstance) -> SegmentResult:
    """One try of one segment on one instance: upload its media, run its prompt, take its video."""
    started = time.monotonic()
    request, template = ctx.request, ctx.template
    tag = f"{ctx.job_id}_{uuid.uuid4().hex[:6]}_seg{segment.index}"
    uploaded: list[str] = []
    produced: list[Path] = []
    try:
        log.info("%s: segment %d, %s", instance.name.upper(), segment.index, segment.describe())
        client = ComfyClient(instance.url)
        values: dict[str, Any] = {
            "frames": segment.frames, "generate_frames": template.grid.round_up(segment.frames),
            "fps": request.fps, "width": request.width, "height": request.height,
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
            "steps": request.steps, "filename_prefix": f"{tag}/out",
            # For SaveSegmentVideo's split form: the overlaps, and the output's x264 settings for the body.
            "overlap_before": plan.overlap_with_previous(segment), "overlap_after": plan.overlap_with_next(segment),
            "output_crf": request.output.crf, "output_preset": request.output.preset,
        }
        for slot, path in files.items():
            if template.binds(slot):
                name = client.upload(path, f"{tag}_{slot}{path.suffix}")
                uploaded.append(name)
                values[slot] = name
        timeout_s = ctx.settings.segment_timeout_s + ctx.settings.segment_timeout_per_frame_s * segment.frames
        graph = template.bind(values)
        try:
            result = client.run_prompt(graph, timeout_s=timeout_s, is_alive=instance.is_alive,
                                       should_stop=ctx.cancel.is_set)
        except PromptRejected as exc:
            raise JobFailed(f"workflow {template.name!r} was rejected by ComfyUI: {exc}") from None
        except PromptCancelled:
            raise JobCancelled("the job was cancelled") from None
        except PromptFailed as exc:
            raise JobFailed(f"segment {segment.index} ({segment.describe()}) failed on {instance.name}: {exc}\n"
                            f"last log lines of {instance.name}:\n{instance.log_tail(15)}") from None
        except PromptTimedOut:
            raise PromptTimedOut(f"segment {segment.index} did not finish within {timeout_s:.0f} s "
                                 "(SEGMENT_TIMEOUT_S + SEGMENT_TIMEOUT_PER_FRAME_S x frames); interrupted") from None
        outputs = [o for o in result.outputs if template.spec.output_node in (None, o.node_id)]
        produced = [instance.output_dir / o.subfolder / o.filename for o in outputs]
        video = _take_video(client, instance, outputs, ctx.work_dir / f"seg{segment.index}")
        if video is None:
            raise JobFailed(f"workflow {template.name!r} produced no video for segment {segment.index} "
                            f"(outputs: {[o.filename for o in result.outputs]})")
        missing = video.missing_parts(segment.frames, values["overlap_before"], values["overlap_after"])
        if missing:
            raise JobFailed(f"workflow {template.name!r} saved segment {segment.index} in SaveSegmentVideo's split "
                            f"form without its {' and '.join(missing)} (outputs: {[o.filename for o in outputs]}); "
                            "bind both overlap_before and overlap_after, or neither")
        seconds = time.monotonic() - started
        nodes = {f"{node} {graph.get(node, {}).get('class_type', '?')}": s for node, s in result.node_seconds.items()}
        slowest = ", ".join(f"{name} {s:.1f} s" for name, s in sorted(nodes.items(), key=lambda i: -i[1])[:3])
        log.info("%s: segment %d done in %.2f s (ComfyUI %.2f s; %s)", instance.name.upper(), segment.index,
                 seconds, result.seconds, slowest)
        return SegmentResult(segment, video, instance, seconds, result.seconds, time.monotonic(),
                             node_seconds=nodes)
    finally:
        for name in uploaded:
            (instance.input_dir / name).unlink(missing_ok=True)
        for path in produced:
            path.unlink(missing_ok=True)
        shutil.rmtree(instance.output_dir / tag, ignore_errors=True)


def _take_video(client: ComfyClient, instance: ComfyInstance, outputs: list[ComfyOutputFile],
                stem: Path) -> SegmentVideo | None:
    """The segment's video files, moved into the job folder as `stem`_<part><suffix>: SaveSegmentVideo's
    split form (head / body / tail) if it wrote one, else the first video output; None if there is none."""
    parts = {split_part(o.filename): o for o in outputs if split_part(o.filename)}
    if parts:
        taken = {part: _take_output(client, instance, o, stem.with_name(f"{stem.name}_{part}{Path(o.filename).suffix}"))
                 for part, o in parts.items()}
        return SegmentVideo(taken.get("body"), taken.get("head"), taken.get("tail"), split=True)
    videos = [o for o in outputs if o.filename.lower().endswith(VIDEO_SUFFIXES)]
    if not videos:
        return None
    return SegmentVideo.whole(_take_output(client, instance, videos[0],
                                           stem.with_name(f"{stem.name}_out{Path(videos[0].filename).suffix}")))


def _take_output(client: ComfyClient, instance: ComfyInstance, output: ComfyOutputFile, dest: Path) -> Path:
    """Moves an output file from the instance's output folder on this machine into the job folder
    (a rename, no copy, on one filesystem); downloads it over HTTP only if it is not there."""
    local = (instance.output_dir / output.subfolder / output.filename).resolve()
    if output.type == "output" and local.is_relative_to(instance.output_dir.resolve()) and local.is_file():
        return Path(shutil.move(local, dest))
    return client.download(output, dest)


def output_format(request: JobRequest) -> OutputFormat:
    return OutputFormat(request.width, request.height, request.fps, request.output.crf, request.output.preset,
                        request.output.audio_bitrate_kbps)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "job"
