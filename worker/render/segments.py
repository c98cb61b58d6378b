"""A job's segments on the ComfyUI instances: each on a free instance, all at once; a segment whose
instance fails it (dies, answers 5xx or nonsense) or that overruns its deadline is tried again on another;
each segment's video is handed on (to the stitcher) as soon as it exists. What each failure means for the
job is decided in one place (_final_error); whether the instance is restarted, in the pool's release."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from comfy_manager import AcquireCancelled, ComfyClient, ComfyInstance, InstancePool, NoInstanceLeft
from comfy_manager.client import (ComfyError, ComfyOutputFile, ConnectionLost, InstanceFault, PromptCancelled,
                                  PromptFailed, PromptRejected, PromptTimedOut, RequestRefused)
from comfy_manager.oom import oom_line
from worker.request.errors import JobCancelled, JobFailed, WorkerUnhealthy
from worker.planning.memory import PeakMemory, SegmentMemory
from worker.progress.tracker import JobProgressTracker
from worker.request.job_request import JobRequest
from worker.request.settings import WorkerSettings
from worker.templates.template import WorkflowTemplate
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.media.segment_format import split_part, stats_name
from worker.render.segment_video import SegmentVideo
from worker.render.slot_values import segment_values

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")
LOG_LINES = 15  # of a failed instance's log, in the error


@dataclass(frozen=True)
class SegmentResult:
    segment: Segment
    video: SegmentVideo
    instance: str  # the instance that made it, e.g. gpu0:8188
    gpu: int | None
    seconds: float
    comfy_seconds: float
    finished_at: float  # time.monotonic() when the segment's video was on disk
    attempts: int = 1
    node_seconds: dict[str, float] = field(default_factory=dict)  # "id ClassType" -> seconds
    device_settings: str | None = None  # the template's device row used on this instance (e.g. "gpu>=80GB")
    started_at: float = 0.0  # time.monotonic() when the try that made the video began
    memory: SegmentMemory | None = None  # the instance's memory while the prompt ran (Learned learns from it)
    cold: bool = False  # the instance's first prompt: it loaded the models (its time and memory are theirs too)
    worker: str | None = None  # another worker of the endpoint that rendered it as a segment job; None: this one


@dataclass(frozen=True)
class RenderJob:
    """What rendering a job's segments reads, and nothing else."""

    job_id: str  # names the segment's files on the instances
    request: JobRequest  # its size, preset and template_params, bound into each segment's graph
    template: WorkflowTemplate
    pool: InstancePool  # the instances the segments run on
    work_dir: Path  # the job's folder: each segment's video is moved here
    progress: JobProgressTracker  # told when a segment starts, reports, is retried, ends
    cancel: threading.Event  # set: stop every segment
    retries: int  # SEGMENT_RETRIES: tries on other instances after a failure that was the instance's
    timeout_s: float  # a segment's deadline: SEGMENT_TIMEOUT_S ...
    timeout_per_frame_s: float  # ... plus SEGMENT_TIMEOUT_PER_FRAME_S for each of its frames

    @classmethod
    def of(cls, job_id: str, request: JobRequest, template: WorkflowTemplate, pool: InstancePool, work_dir: Path,
           progress: JobProgressTracker, cancel: threading.Event, settings: WorkerSettings) -> RenderJob:
        return cls(job_id, request, template, pool, work_dir, progress, cancel, settings.segment_retries,
                   settings.segment_timeout_s, settings.segment_timeout_per_frame_s)

    def deadline_s(self, segment: Segment) -> float:
        return self.timeout_s + self.timeout_per_frame_s * segment.frames


class OtherWorkers(Protocol):
    """The endpoint's other workers (worker/render/remote.py: RemoteSegments)."""

    errors: dict[int, str]  # segment index -> why it came back to be rendered here

    def render(self, segment: Segment, files: dict[str, Path]) -> SegmentResult | None: ...


def run_segments(job: RenderJob, plan: SegmentPlan, segment_inputs: list[dict[str, Path]],
                 on_video: Callable[[int, SegmentVideo], None], others: OtherWorkers | None = None,
                 remote: frozenset[int] = frozenset()) -> list[SegmentResult]:
    """Runs every segment at once, each on a free instance, or those in `remote` on other workers (`others`),
    rendered here after all where they come back; on_video(index, video) gets each segment's video as soon as
    it is done (the stitcher starts on it while the others generate). The first failure stops the other
    segments and is raised."""

    def run(segment: Segment) -> SegmentResult:
        files = segment_inputs[segment.index]
        result = others.render(segment, files) if others is not None and segment.index in remote else None
        if result is None:
            if segment.index in remote:
                job.progress.segment_retrying(segment.index)
            try:
                result = run_segment(job, plan, segment, files)
            except JobFailed as exc:
                away = others.errors.get(segment.index) if others is not None else None
                if away is None:
                    raise
                raise JobFailed(f"{exc}\n(before that, as a segment job on another worker: {away})") from None
        job.progress.segment_done(segment.index)
        return result

    with ThreadPoolExecutor(max_workers=len(plan.segments)) as executor:
        futures = [executor.submit(run, segment) for segment in plan.segments]
        try:
            for future in as_completed(futures):
                if future.exception() is not None:
                    raise _root_failure(futures, job)
                result = future.result()
                on_video(result.segment.index, result.video)
        except BaseException:
            job.cancel.set()  # stop the other segments instead of finishing useless work
            raise
        return [f.result() for f in futures]


def _root_failure(futures: list[Future], job: RenderJob) -> BaseException:
    """The first real failure among the segments, once the others have stopped (the cancellations it
    caused in them are not the story)."""
    job.cancel.set()
    wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    return next((e for e in errors if not isinstance(e, JobCancelled)), errors[0])


def run_segment(job: RenderJob, plan: SegmentPlan, segment: Segment, files: dict[str, Path]) -> SegmentResult:
    """Runs one segment, trying again on another instance when the failure was the instance's or a deadline
    (_final_error says which); the pool decides from the failure whether the instance is restarted."""
    attempts = job.retries + 1
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        instance = _acquire(job, segment)
        try:
            result = attempt_segment(job, plan, segment, files, instance)
        except BaseException as exc:
            try:  # judged before a restart replaces the process; the instance goes back whatever happens here
                final = _final_error(job, segment, instance, exc)
                last_instance, last_tail = instance, instance.log_tail(LOG_LINES)
            finally:
                job.pool.release(instance, failure=exc)
            if final is exc:
                raise
            if final is not None:
                raise final from None
            failures.append(f"attempt {attempt} on {instance.name}: {exc}")
            log.warning("%s: segment %d attempt %d/%d failed: %s", instance.name, segment.index,
                        attempt, attempts, exc)
            job.progress.segment_retrying(segment.index)
            continue
        job.pool.release(instance)
        return replace(result, attempts=attempt)
    gpu = "CPU" if last_instance.gpu is None else f"GPU {last_instance.gpu}"
    raise JobFailed(f"segment {segment.index} ({segment.describe()}) failed {attempts} times; last on "
                    f"{last_instance.name} ({gpu}). " + " | ".join(failures) +
                    f"\nlast log lines of {last_instance.name}:\n{last_tail}")


def _acquire(job: RenderJob, segment: Segment) -> ComfyInstance:
    try:
        return job.pool.acquire(cancel=job.cancel)
    except AcquireCancelled:
        log.info("job %s: segment %d (frames %d-%d) cancelled while waiting for an instance", job.job_id,
                 segment.index, segment.start, segment.end)
        raise JobCancelled("the job was cancelled") from None
    except NoInstanceLeft as exc:
        raise WorkerUnhealthy(str(exc)) from None


def _final_error(job: RenderJob, segment: Segment, instance: ComfyInstance, exc: BaseException) -> BaseException | None:
    """What a failed attempt means for the job: None when the segment is worth another try on another instance
    (the instance failed it: InstanceFault; or it overran its deadline), else the error to end the job with,
    named so that the user knows what to change. An exception this does not know is returned as it is (a bug,
    which the handler reports as such)."""
    where = f"segment {segment.index} ({segment.describe()}) on {instance.name}"
    if isinstance(exc, (JobFailed, JobCancelled)):
        return exc
    if isinstance(exc, PromptCancelled):
        log.info("job %s: segment %d (frames %d-%d) on %s interrupted %s; ComfyUI %s", job.job_id, segment.index,
                 segment.start, segment.end, instance.name, job.progress.where(segment.index), exc)
        return JobCancelled("the job was cancelled")
    if isinstance(exc, PromptRejected):
        return JobFailed(f"workflow {job.template.name!r} was rejected by ComfyUI: {exc}")
    if isinstance(exc, RequestRefused):
        return JobFailed(f"{where}: {exc}")
    if isinstance(exc, PromptTimedOut):
        return None
    if isinstance(exc, (PromptFailed, InstanceFault)):
        # A broken connection may be a process dying: it gets a moment to end, so that its end can be read.
        memory = oom_line(str(exc)) if isinstance(exc, PromptFailed) else None
        memory = memory or instance.out_of_memory(wait_s=2.0 if isinstance(exc, ConnectionLost) else 0.0)
        if memory:
            return _out_of_memory(job, segment, instance, memory)
        if isinstance(exc, InstanceFault):
            return None
        return JobFailed(f"segment {segment.index} ({segment.describe()}) failed on {instance.name}: {exc}\n"
                         f"last log lines of {instance.name}:\n{instance.log_tail(LOG_LINES)}")
    if isinstance(exc, ComfyError):  # none is raised bare; named anyway
        return JobFailed(f"{where}: {exc}")
    if isinstance(exc, OSError):
        return JobFailed(f"{where}: a file could not be read or written ({exc}); check the free space of "
                         "JOB_WORK_DIR and COMFY_INSTANCES_DIR")
    return exc


def _out_of_memory(job: RenderJob, segment: Segment, instance: ComfyInstance, evidence: str) -> JobFailed:
    """Not retried: the same segment on an instance like this one would run into the same limit."""
    request = job.request
    return JobFailed(
        f"out of memory on {instance.name}: segment {segment.index} ({segment.describe()} at "
        f"{request.width}x{request.height}) did not fit; reduce width/height, or the frames per segment (a "
        f"shorter input, or a higher gpu_count where the worker has more instances than the job used). "
        f"Not retried, since the same segment would hit the same limit. Evidence: {evidence}")


def upload_name(tag: str, slot: str, path: Path) -> str:
    """The name a segment's file gets in the instance's input folder. The reference image is the same for
    every segment (and often every job): named by its content, ComfyUI's cache then keeps what was computed
    from it (the CLIP-vision encoding of InfiniteTalk) for the next segment on the same instance."""
    if slot == "image":
        return f"image_{hashlib.sha256(path.read_bytes()).hexdigest()[:20]}{path.suffix}"
    return f"{tag}_{slot}{path.suffix}"


def attempt_segment(job: RenderJob, plan: SegmentPlan, segment: Segment, files: dict[str, Path],
                    instance: ComfyInstance) -> SegmentResult:
    """One try of one segment on one instance: upload its media, run its prompt, take its video."""
    started = time.monotonic()
    template = job.template
    tag = f"{job.job_id}_{uuid.uuid4().hex[:6]}_seg{segment.index}"
    uploaded: dict[str, str] = {}  # slot -> file name in the instance's input folder
    produced: list[Path] = []
    try:
        client = ComfyClient(instance.url)
        for slot, path in files.items():
            if template.binds(slot):
                uploaded[slot] = client.upload(path, upload_name(tag, slot, path))
        params = template.params_for(job.request.quality, instance.vram_gb, job.request.template_params)
        log.info("%s: segment %d, %s%s", instance.name, segment.index, segment.describe(),
                 "".join(f", {k} {v}" for k, v in (("preset", params.preset), ("settings", params.device)) if v))
        values = segment_values(job.request, template, plan, segment, f"{tag}/out", uploaded, params)
        graph = template.bind(values, params)
        job.progress.segment_started(segment.index, instance.name, instance.gpu, graph)
        timeout_s = job.deadline_s(segment)
        pid = instance.process.pid if instance.process is not None else None
        cold, process = not instance.warm, instance.generation  # cold: this prompt loads the models
        with PeakMemory(pid) as memory:
            result = _run_prompt(job, client, graph, segment, instance, timeout_s)
        instance.prompt_finished(process)
        outputs = [o for o in result.outputs if template.spec.output_node in (None, o.node_id)]
        produced = [instance.output_dir / o.subfolder / o.filename for o in outputs]
        video = _take_video(client, instance, outputs, job.work_dir / f"seg{segment.index}")
        if video is None:
            raise JobFailed(f"workflow {template.name!r} produced no video for segment {segment.index} "
                            f"(outputs: {[o.filename for o in result.outputs]})")
        missing = video.missing_parts(segment.frames, plan.overlap_with_previous(segment),
                                      plan.overlap_with_next(segment))
        if missing:
            raise JobFailed(f"workflow {template.name!r} saved segment {segment.index} in SaveSegmentVideo's split "
                            f"form without its {' and '.join(missing)} (outputs: {[o.filename for o in outputs]}); "
                            "bind both overlap_before and overlap_after, or neither")
        seconds = time.monotonic() - started
        nodes = {f"{node} {graph.get(node, {}).get('class_type', '?')}": s for node, s in result.node_seconds.items()}
        slowest = ", ".join(f"{name} {s:.1f} s" for name, s in sorted(nodes.items(), key=lambda i: -i[1])[:3])
        log.info("%s: segment %d done in %.2f s (ComfyUI %.2f s; %s)", instance.name, segment.index,
                 seconds, result.seconds, slowest)
        return SegmentResult(segment, video, instance.name, instance.gpu, seconds, result.seconds, time.monotonic(),
                             node_seconds=nodes, device_settings=params.device, started_at=started,
                             memory=SegmentMemory.of(pid, memory), cold=cold)
    finally:
        for name in uploaded.values():
            (instance.input_dir / name).unlink(missing_ok=True)
        for path in produced:
            path.unlink(missing_ok=True)
        shutil.rmtree(instance.output_dir / tag, ignore_errors=True)


def _run_prompt(job: RenderJob, client: ComfyClient, graph: dict, segment: Segment, instance: ComfyInstance,
                timeout_s: float):
    """Runs the segment's graph; a timeout says which settings set the deadline (the rest: _final_error)."""
    try:
        return client.run_prompt(graph, timeout_s=timeout_s, is_alive=instance.is_alive, should_stop=job.cancel.is_set,
                                 on_progress=lambda event: job.progress.segment_event(segment.index, event))
    except PromptTimedOut:
        raise PromptTimedOut(f"segment {segment.index} did not finish within {timeout_s:.0f} s "
                             "(SEGMENT_TIMEOUT_S + SEGMENT_TIMEOUT_PER_FRAME_S x frames); interrupted") from None


def _take_video(client: ComfyClient, instance: ComfyInstance, outputs: list[ComfyOutputFile],
                stem: Path) -> SegmentVideo | None:
    """The segment's video files, moved into the job folder as `stem`_<part><suffix>: SaveSegmentVideo's
    split form (head / body / tail) if it wrote one, else the first video output; None if there is none.
    SaveSegmentVideo's measurements come along where it wrote them."""
    def take(part: str, output: ComfyOutputFile) -> Path:
        return _take_output(client, instance, output, stem.with_name(f"{stem.name}_{part}{Path(output.filename).suffix}"))

    parts = {split_part(o.filename): o for o in outputs if split_part(o.filename)}
    if parts:
        taken = {part: take(part, o) for part, o in parts.items()}
        stats = _take_stats(client, instance, next(iter(parts.values())), stem)
        return SegmentVideo(taken.get("body"), taken.get("head"), taken.get("tail"), split=True, stats=stats)
    videos = [o for o in outputs if o.filename.lower().endswith(VIDEO_SUFFIXES)]
    if not videos:
        return None
    return SegmentVideo.whole(take("out", videos[0]), _take_stats(client, instance, videos[0], stem))


def _take_stats(client: ComfyClient, instance: ComfyInstance, video: ComfyOutputFile, stem: Path) -> Path | None:
    """SaveSegmentVideo's measurements written beside `video`, moved into the job folder; None where there are
    none (another save node) or they cannot be had: they only feed the seam report."""
    name = stats_name(video.filename)
    if name is None:
        return None
    try:
        return _take_output(client, instance, replace(video, filename=name), stem.with_name(f"{stem.name}_stats.json"))
    except (OSError, ComfyError) as exc:
        log.warning("%s: no measurements beside %s (%s); the seam report goes without them", instance.name,
                    video.filename, exc)
        return None


def _take_output(client: ComfyClient, instance: ComfyInstance, output: ComfyOutputFile, dest: Path) -> Path:
    """Moves an output file from the instance's output folder on this machine into the job folder
    (a rename, no copy, on one filesystem); downloads it over HTTP only if it is not there."""
    local = (instance.output_dir / output.subfolder / output.filename).resolve()
    if output.type == "output" and local.is_relative_to(instance.output_dir.resolve()) and local.is_file():
        return Path(shutil.move(local, dest))
    return client.download(output, dest)
