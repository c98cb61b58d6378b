"""The local API (`handler.py --rp_serve_api`): the runpod SDK's development server plus two routes of the
worker's own, because the SDK's local /status cannot show progress or cancel:

- its `POST /run` only stores the job, and `POST /status/{id}` then runs it to the end inside that request
  (so it has nothing to say while the job runs), and it has no /cancel;
- `GET /progress/{id}` (and `GET /progress`, every job) gives the job's progress while it runs, the same
  object RunPod's /status shows as `output` on the real platform, then how it ended;
- `POST /cancel/{id}` stops a running job as RunPod's /cancel does (the /status or /runsync request that
  runs it answers FAILED with "the job was cancelled"; the worker goes on serving).

On RunPod none of this runs: progress goes out with runpod.serverless.progress_update and RunPod's own
/status and /cancel serve it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from worker.api.live_jobs import LiveJobReport, LiveJobs


def queued_in_sdk(job_id: str) -> bool:
    """True if the SDK's local API holds the job (stored by POST /run, not yet run by /status)."""
    from runpod.serverless.modules.worker_state import JobsProgress

    return JobsProgress().get(job_id) is not None


def add_progress_routes(app: FastAPI, jobs: LiveJobs) -> None:
    def not_found(job_id: str) -> JSONResponse:
        return JSONResponse({"id": job_id, "error": f"no job {job_id!r} on this worker"}, status_code=404)

    @app.get("/progress", tags=["Worker: progress and cancel"], summary="Every job's progress")
    def all_progress() -> dict[str, list[LiveJobReport]]:
        return {"jobs": jobs.reports()}

    @app.get("/progress/{job_id}", tags=["Worker: progress and cancel"], summary="A job's progress",
             response_model=LiveJobReport)
    def progress(job_id: str) -> Any:
        report = jobs.report(job_id)
        if report is None:
            if queued_in_sdk(job_id):
                return LiveJobReport(id=job_id, status="IN_QUEUE")
            return not_found(job_id)
        return report

    @app.post("/cancel/{job_id}", tags=["Worker: progress and cancel"], summary="Cancel a job",
              response_model=LiveJobReport)
    def cancel(job_id: str) -> Any:
        report = jobs.cancel(job_id, queued=queued_in_sdk(job_id))
        if report is None:
            known = jobs.report(job_id)
            if known is None:
                return not_found(job_id)
            return JSONResponse({"id": job_id, "status": known.status,
                                 "error": f"job {job_id!r} has already ended ({known.status})"}, status_code=409)
        return report


def serve(config: dict, jobs: LiveJobs) -> None:
    """Runs the SDK's local API with the worker's routes added (what runpod.serverless.start does for
    --rp_serve_api, with the app in hand)."""
    import runpod.serverless
    from runpod.serverless.modules import rp_fastapi

    args, _ = runpod.serverless.parser.parse_known_args()
    config["rp_args"] = vars(args)
    api = rp_fastapi.WorkerAPI(config)
    add_progress_routes(api.rp_app, jobs)
    api.start_uvicorn(api_host=args.rp_api_host, api_port=args.rp_api_port, api_concurrency=args.rp_api_concurrency)
