"""One job, request to response, as the README draws it: each step is one call into the module that owns it.

run_job needs no runpod: tests and benchmarks call it directly with an InstancePool.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from client.report import estimate_report, job_summary
from comfy_manager import CancelEvent, InstancePool, NoInstanceLeft
from worker.media.ffmpeg import Limits
from worker.media.inputs import cut_segment_inputs, fetch_inputs
from worker.media.loudness import loudness_envelope
from worker.output.delivery import check_deliverable, deliver
from worker.output.response import Timings, build_dry_run, build_response
from worker.output.seam_blend import BlendOptions
from worker.output.stitch import OutputFormat, Stitcher
from worker.planning.learned import Learned
from worker.planning.plan import local_lanes, plan_job, remote_lanes
from worker.progress.tracker import JobProgressTracker, ProgressSink
from worker.render.remote import RemoteSegments
from worker.render.segments import RenderJob, run_segments
from worker.request.errors import WorkerUnhealthy
from worker.request.job_request import JobRequest, parse_request, safe_job_id
from worker.request.settings import WorkerSettings
from worker.templates.template import choose_template

log = logging.getLogger(__name__)


def run_job(job_input: Any, pool: InstancePool, settings: WorkerSettings, job_id: str | None = None,
            on_progress: ProgressSink | None = None, cancel: threading.Event | None = None,
            learned: Learned | None = None) -> dict:
    """Runs one job and returns the response as a dict; raises JobInputError, JobFailed or JobCancelled.

    `on_progress` gets the job's progress (worker.progress.tracker.JobProgress) every PROGRESS_INTERVAL_S
    and at each change of stage or segment state, from a thread of its own. Setting `cancel` stops the job: its
    prompts are interrupted and dequeued, its files removed (a comfy_manager.CancelEvent also wakes segments
    waiting for an instance at once). `learned`: the worker's, which learns from each job how to size the next
    one's segments and how long jobs take (default: a fresh one). WorkerUnhealthy (within seconds) when no ComfyUI instance is left in service.
    """
    started = time.monotonic()
    try:
        pool.check_serving()
    except NoInstanceLeft as exc:
        raise WorkerUnhealthy(str(exc)) from None
    request = parse_request(job_input)
    template = choose_template(request, settings)
    for instance in pool.instances:  # a template with no settings for this worker's GPUs is refused now
        template.params_for(request.quality, instance.vram_gb, request.template_params)
    learned = learned or Learned(settings.stitch_lead)
    cancel = cancel or CancelEvent()
    limits = Limits.of(settings, cancel)
    output = output_format(request)
    with job_folder(settings, job_id) as (job_id, work_dir), \
            JobProgressTracker(on_progress, started, job_id, settings.progress_interval_s,
                               worker=settings.runpod_pod_id) as progress:
        inputs = fetch_inputs(request, settings, work_dir, limits)
        frames = inputs.total_frames(request.fps)
        check_deliverable(request.output.destination, output, frames, settings)  # before any GPU time
        loudness = None if request.dry_run else loudness_envelope(inputs.final_audio, request.fps, frames, limits)
        lanes = local_lanes(learned.memory_budgets(pool.serving_instances, settings.memory_reserve_bytes,
                                                   settings.memory_budget_bytes))
        lanes += remote_lanes(settings.fanout_workers, settings.fanout_cold_start_s + template.load_s)
        planned = plan_job(request, template, frames, lanes, learned, None if loudness is None else loudness.levels_db,
                           settings.seam_budget_percent)
        if request.dry_run:
            progress.finish()
            dry = build_dry_run(request, template, planned, len(lanes), [lane.name for lane in lanes]).model_dump()
            log.info("job %s dry run\n%s", job_id, estimate_report(dry))
            return dry
        plan = planned.segments
        progress.planned(plan, template, planned.learned, planned.estimate, request.width * request.height)
        segment_inputs = cut_segment_inputs(request, plan, inputs, work_dir, limits)
        prepared = time.monotonic()
        progress.stage("generating")
        blend = BlendOptions(request.seams.blend == "focused", request.seams.blend_frames)
        render = RenderJob.of(job_id, request, template, pool, work_dir, progress, cancel, settings)
        others = RemoteSegments(render, plan, settings, planned.workers) if planned.remote else None
        try:
            with Stitcher(plan, work_dir / "chunks", inputs.final_audio, output, blend=blend, loudness=loudness,
                          limits=limits) as stitcher:
                results = run_segments(render, plan, segment_inputs, stitcher.add_segment, others, planned.remote)
                progress.stage("stitching")
                stitched = stitcher.finish(work_dir / "result.mp4")
        finally:
            if others is not None:  # nothing of the job left running on other workers or in the bucket
                others.cancel_all()
                others.close()
        generated, finished = max(r.finished_at for r in results), time.monotonic()
        progress.stage("delivering")
        delivery = deliver(stitched.path, request.output.destination, job_id, settings)
        timings = Timings.between(started, prepared, generated, finished, time.monotonic())
        learned.learn(request, template, results, stitched, timings)
        response = build_response(request, template, planned, results, stitched, delivery, timings,
                                  loudness.median_db, len(lanes), started)
        progress.finish()
    result = response.model_dump()
    for warning in response.warnings:
        log.warning("job %s: %s", job_id, warning)
    log.info("job %s done\n%s", job_id, job_summary(result))  # client/report.py: what the client prints too
    return result


def output_format(request: JobRequest) -> OutputFormat:
    """How the request wants the result encoded."""
    return OutputFormat(request.width, request.height, request.fps, request.output.crf, request.output.preset,
                        request.output.audio_bitrate_kbps)


@contextlib.contextmanager
def job_folder(settings: WorkerSettings, job_id: str | None) -> Iterator[tuple[str, Path]]:
    """(job id, a new folder of its own under JOB_WORK_DIR), removed with everything in it when the job ends."""
    job_id = safe_job_id(job_id or uuid.uuid4().hex[:12])
    work_dir = settings.job_work_dir / f"{job_id}-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir(parents=True)
    try:
        yield job_id, work_dir
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
