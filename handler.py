"""RunPod entry point: starts the ComfyUI instances, then serves jobs through worker.job.run_job."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading

import runpod

from comfy_manager import CancelEvent, InstancePool, PoolSettings
from worker.config import WorkerSettings
from worker.errors import JobCancelled, JobFailed, JobInputError, WorkerUnhealthy
from worker.job import run_job
from worker.job_planner import JobPlanner
from worker.model_weights import models_fitness_check

settings = WorkerSettings.from_env()
pool = InstancePool(PoolSettings.from_env())
planner = JobPlanner(settings.stitch_lead)  # learns from each job how to size the next one's segments
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("handler")


async def handler(job: dict) -> dict:
    # The work runs in a thread so that the event loop (local API, progress, heartbeats, other jobs)
    # stays free. RunPod cancels a job by cancelling this task: the thread is told to stop.
    cancel = CancelEvent()
    try:
        return await asyncio.to_thread(run_one, job, cancel)
    except asyncio.CancelledError:
        log.info("job %s cancelled: interrupting its segments", job.get("id"))
        cancel.set()
        raise


def run_one(job: dict, cancel: threading.Event) -> dict:
    def progress(message: str) -> None:
        if settings.on_runpod:  # local test and serve-api modes have no endpoint to send progress to
            runpod.serverless.progress_update(job, message)

    try:
        return run_job(job.get("input"), pool, settings, job_id=str(job.get("id", "job")), on_progress=progress,
                       cancel=cancel, planner=planner)
    except WorkerUnhealthy as exc:
        # The SDK turns refresh_worker into stopPod: RunPod replaces this worker after the job.
        log.error("job %s failed and the worker asks to be replaced: %s", job.get("id"), exc)
        return {"error": str(exc), "refresh_worker": True}
    except (JobInputError, JobFailed, JobCancelled) as exc:
        log.warning("job %s failed: %s", job.get("id"), exc)
        return {"error": str(exc)}
    except Exception as exc:  # a bug: the worker must go on serving
        log.exception("job %s crashed", job.get("id"))
        return {"error": f"internal error: {type(exc).__name__}: {exc}"}


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
    # Refuses to take jobs while model files are missing (only where REQUIRE_MODELS=1, as in the image).
    runpod.serverless.register_fitness_check(models_fitness_check)
    stop_instances_on_signals()
    atexit.register(pool.shutdown)
    pool.start()
    runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda current: settings.max_concurrent_jobs})
