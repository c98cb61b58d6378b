"""RunPod entry point: starts the ComfyUI instances, then serves jobs through worker.job.run_job."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import threading

import runpod
# The SDK's progress sending itself, without the thread progress_update starts for each update (runpod==1.12.0,
# requirements/worker.lock): ProgressSender calls it from one thread, so that updates arrive in order.
from runpod.serverless.modules.rp_progress import _thread_target as send_progress_to_runpod

from comfy_manager import InstancePool
from worker.request.errors import JobCancelled, JobFailed, JobInputError, WorkerUnhealthy
from worker.job import run_job
from worker.request.segment_job import SEGMENT_JOB_KEY
from worker.segment_job import run_segment_job
from worker.planning.learned import Learned
from worker.api.live_jobs import LiveJobs
from worker.api.progress_sender import ProgressSender
from worker.api.startup import check_and_start, read_settings
from worker.api.warmup import warm_up
from worker.progress.tracker import JobProgress

# Never raises: a bad setting is one of the start-up problems every job is then answered with (worker/api/startup.py).
startup = read_settings()
settings = startup.settings
pool = InstancePool(startup.pool_settings)
learned = Learned(settings.stitch_lead)  # what each job teaches about sizing and timing the next ones
live_jobs = LiveJobs()  # progress and cancel signals, for the local API's own routes
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("handler")


async def handler(job: dict) -> dict:
    # The work runs in a thread so that the event loop (local API, progress, heartbeats, other jobs)
    # stays free. RunPod cancels a job by cancelling this task (the local API: POST /cancel/{id}); either
    # way the thread is told to stop.
    job_id = str(job.get("id", "job"))
    if not startup.ok:
        log.error("job %s answered with the start-up problems", job_id)
        return startup.answer()
    cancel = live_jobs.started(job_id)
    result: dict = {"error": "the job was cancelled"}
    try:
        if not cancel.is_set():
            result = await asyncio.to_thread(run_one, job, cancel)
        return result
    except asyncio.CancelledError:
        log.info("job %s cancelled: interrupting its segments", job_id)
        live_jobs.cancel(job_id)
        raise
    finally:
        live_jobs.ended(job_id, result.get("error"))


def run_one(job: dict, cancel: threading.Event) -> dict:
    job_id = str(job.get("id", "job"))
    # Local test and serve-api modes have no endpoint to send progress to.
    sender = ProgressSender(lambda payload: send_progress_to_runpod(job, payload), job_id) if settings.on_runpod \
        else None

    def progress(update: JobProgress) -> None:
        live_jobs.update(job_id, update)
        # "done" is not sent: the result follows at once, and no progress update must arrive after it.
        if sender is not None and update.stage != "done":
            sender.put(update.model_dump(mode="json"))

    job_input = job.get("input")
    try:
        if isinstance(job_input, dict) and SEGMENT_JOB_KEY in job_input:  # one segment of another worker's job
            return run_segment_job(job_input, pool, settings, job_id=job_id, on_progress=progress, cancel=cancel)
        return run_job(job_input, pool, settings, job_id=job_id, on_progress=progress, cancel=cancel,
                       learned=learned)
    except WorkerUnhealthy as exc:
        # The SDK turns refresh_worker into stopPod: RunPod replaces this worker after the job.
        log.error("job %s failed and the worker asks to be replaced: %s", job_id, exc)
        return {"error": str(exc), "refresh_worker": True}
    except JobCancelled as exc:
        log.info("job %s cancelled", job_id)  # worker/render/segments.py logged what each segment was doing
        return {"error": str(exc)}
    except (JobInputError, JobFailed) as exc:
        log.warning("job %s failed: %s", job.get("id"), exc)
        return {"error": str(exc)}
    except Exception as exc:  # a bug: the worker must go on serving
        log.exception("job %s crashed", job.get("id"))
        return {"error": f"internal error: {type(exc).__name__}: {exc}"}
    finally:
        if sender is not None:
            sender.close()


def set_sdk_log_level(serve_api: bool) -> None:
    """The runpod SDK's own log level. The SDK logs every job's whole result: at DEBUG, its default level
    ("Handler output: {...}"), and in the local test mode (`make run`) at INFO ("Job result: {...}"). The worker
    logs each job's summary instead (client/report.py), so the SDK follows LOG_LEVEL (or RUNPOD_DEBUG_LEVEL, its
    own variable, where set), and in the local test mode its INFO lines, the dump among them, show only when
    DEBUG is asked for."""
    from runpod.serverless.modules.rp_logger import RunPodLogger

    asked = (os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL") or settings.log_level).upper()
    level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(asked, asked)
    if level not in ("DEBUG", "INFO", "WARN", "ERROR"):
        level = "INFO"
    local_test = not serve_api and ("--test_input" in sys.argv or not os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    if local_test and level == "INFO" and settings.log_level.upper() != "DEBUG":
        level = "WARN"
    RunPodLogger().level = level


def stop_instances_on_signals() -> None:
    """On SIGTERM or SIGINT, stop the ComfyUI instances, then end as the signal asks.

    Installed before the instances start, so it covers start-up. runpod's serve-api mode (uvicorn) puts it
    back after its own graceful shutdown and raises the signal again, which lands here; the queue mode's
    own handler ends the worker normally, and atexit stops the instances. If the worker is killed
    outright, the kernel stops them (comfy_manager/processes.py).
    """
    def on_signal(signum: int, frame) -> None:
        log.warning("%s: stopping the ComfyUI instances", signal.Signals(signum).name)
        pool.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


if __name__ == "__main__":
    set_sdk_log_level("--rp_serve_api" in sys.argv)
    stop_instances_on_signals()
    atexit.register(pool.shutdown)
    # Checks (models where REQUIRE_MODELS=1, the templates' device rows), then the instances. Whatever fails is
    # logged, one line a cause, and answered to every job (with refresh_worker) instead of ending the worker.
    check_and_start(startup, pool)
    if startup.ok:
        warm_up(pool, settings, run_job)  # WARMUP_SIZE=WIDTHxHEIGHT: each instance runs one short job first
    config = {"handler": handler, "concurrency_modifier": lambda current: settings.max_concurrent_jobs}
    if "--rp_serve_api" in sys.argv:  # the SDK's local API, plus GET /progress/{id} and POST /cancel/{id}
        from worker.api.local_api import serve

        serve(config, live_jobs)
    else:
        runpod.serverless.start(config)
