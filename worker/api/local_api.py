"""The local API (`handler.py --rp_serve_api`): the runpod SDK's development server plus two routes of the
worker's own, because the SDK's local /status cannot show progress or cancel:

- its `POST /run` only stores the job, and `POST /status/{id}` then runs it to the end inside that request
  (so it has nothing to say while the job runs), and it has no /cancel;
- `GET /progress/{id}` (and `GET /progress`, every job) gives the job's progress while it runs, the same
  object RunPod's /status shows as `output` on the real platform, then how it ended;
- `POST /cancel/{id}` stops a running job as RunPod's /cancel does (the /status or /runsync request that
  runs it answers FAILED with "the job was cancelled"; the worker goes on serving).

Its page at `/` is a plain list of the routes that needs nothing from the internet (the SDK's Swagger UI,
which loads its scripts from a CDN and is blank offline, moves to `/docs`).

On RunPod none of this runs: progress goes out with runpod.serverless.progress_update and RunPod's own
/status and /cancel serve it.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

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


def routes_page(app: FastAPI) -> str:
    """The local API's front page: every route with its method and summary, as plain HTML (no scripts)."""
    rows = []
    for path, methods in app.openapi().get("paths", {}).items():
        for method, spec in methods.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(spec.get('summary', ''))}</td></tr>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Worker API (local)</title></head><body>"
            f"<h1>{html.escape(app.title)}: the worker's local API</h1>"
            "<p>Send a job with <code>POST /run</code> (then <code>POST /status/{id}</code> runs it) or "
            "<code>POST /runsync</code>; follow it with <code>GET /progress/{id}</code>; stop it with "
            "<code>POST /cancel/{id}</code>. The schema is at <a href='/openapi.json'>/openapi.json</a>; "
            "<a href='/docs'>/docs</a> is the interactive page (its scripts come from a CDN, so it needs the "
            "internet).</p><table border='1' cellpadding='4'><tr><th>method</th><th>route</th><th>what</th></tr>"
            + "".join(rows) + "</table></body></html>")


def replace_docs_page(app: FastAPI) -> None:
    """`/` becomes routes_page (works offline); the Swagger UI that the SDK put there moves to `/docs`."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != app.docs_url]

    @app.get("/", include_in_schema=False)
    def front_page() -> HTMLResponse:
        return HTMLResponse(routes_page(app))

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - Swagger UI")


def serve(config: dict, jobs: LiveJobs) -> None:
    """Runs the SDK's local API with the worker's routes added (what runpod.serverless.start does for
    --rp_serve_api, with the app in hand)."""
    import runpod.serverless
    from runpod.serverless.modules import rp_fastapi

    args, _ = runpod.serverless.parser.parse_known_args()
    config["rp_args"] = vars(args)
    api = rp_fastapi.WorkerAPI(config)
    add_progress_routes(api.rp_app, jobs)
    replace_docs_page(api.rp_app)
    api.start_uvicorn(api_host=args.rp_api_host, api_port=args.rp_api_port, api_concurrency=args.rp_api_concurrency)
