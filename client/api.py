"""The two ways to reach the worker, behind one interface: submit a job, read its state, cancel it.

RunPodEndpoint: RunPod's queue API of one endpoint (https://api.runpod.ai/v2/<id>/run, /status/<job>,
/cancel/<job>, /runsync; an API key as bearer token). While a job runs, /status carries the worker's
progress object as `output`.

LocalApi: the worker's local API (`python handler.py --rp_serve_api`). Its /run only stores the job and
its /status runs the job to the end within that one request, so this client makes that request from a
thread of its own and follows the job meanwhile through the worker's own GET /progress/<job>; POST
/cancel/<job> stops it (README: "Serving the RunPod API locally").
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import requests

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
RUNPOD_BASE_URL = "https://api.runpod.ai/v2"
MB = 1024**2
RESULT_WAIT_S = 300  # local API: from the job's end to its result arriving (a big base64 video takes a while)


class ApiError(RuntimeError):
    """The API refused a request or could not be reached; the message says which and what it answered."""


@dataclass
class JobState:
    id: str
    status: str  # IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT
    progress: dict | None = None  # the worker's progress object (README: "Progress"), while it runs
    output: dict | None = None  # the worker's response, once COMPLETED
    error: str | None = None  # as the worker wrote it, once FAILED

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES


class WorkerApi(Protocol):
    name: str
    body_limit_bytes: int  # largest /run request body it takes

    def submit(self, job_input: dict) -> str: ...
    def state(self, job_id: str) -> JobState: ...
    def cancel(self, job_id: str) -> JobState: ...
    def run_sync(self, job_input: dict, timeout_s: float) -> JobState: ...


def _state_from(body: dict, job_id: str) -> JobState:
    """A /status (or /runsync) answer: RunPod puts the progress under `output` while the job runs."""
    status = str(body.get("status", "UNKNOWN"))
    output = body.get("output")
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error)
    if status in FINAL_STATES:
        return JobState(body.get("id", job_id), status, output=output if isinstance(output, dict) else None,
                        error=error)
    return JobState(body.get("id", job_id), status, progress=output if isinstance(output, dict) else None)


def _json(response: requests.Response, what: str) -> dict:
    if response.status_code == 401:
        raise ApiError(f"{what}: 401 Unauthorized; set RUNPOD_API_KEY to an API key of the endpoint's account")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not response.ok or not isinstance(body, dict):
        raise ApiError(f"{what} answered HTTP {response.status_code}: {response.text[:1000]}")
    return body


class RunPodEndpoint:
    """RunPod's API for one serverless endpoint. RUNPOD_ENDPOINT_BASE_URL changes the base (default
    https://api.runpod.ai/v2), as in the runpod SDK; the tests point it at a local stand-in."""

    body_limit_bytes = 10 * MB  # RunPod's /run (20 MB for /runsync)

    def __init__(self, endpoint_id: str, api_key: str | None, base_url: str | None = None, timeout_s: float = 60):
        if not api_key:
            raise ApiError("RUNPOD_API_KEY is not set: create an API key in the RunPod console (Settings > API Keys) "
                           "and export RUNPOD_API_KEY=...")
        base = (base_url or os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or RUNPOD_BASE_URL).rstrip("/")
        self.url = f"{base}/{endpoint_id}"
        self.name = f"endpoint {endpoint_id}"
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})

    def _call(self, method: str, path: str, what: str, timeout_s: float | None = None, **kwargs) -> dict:
        try:
            response = self.session.request(method, f"{self.url}/{path}", timeout=timeout_s or self.timeout_s,
                                            **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"{what}: could not reach {self.url}: {exc}") from None
        return _json(response, what)

    def submit(self, job_input: dict) -> str:
        body = self._call("post", "run", "POST /run", data=json.dumps({"input": job_input}))
        if "id" not in body:
            raise ApiError(f"POST /run answered without a job id: {json.dumps(body)[:500]}")
        return str(body["id"])

    def state(self, job_id: str) -> JobState:
        return _state_from(self._call("get", f"status/{job_id}", f"GET /status/{job_id}"), job_id)

    def cancel(self, job_id: str) -> JobState:
        return _state_from(self._call("post", f"cancel/{job_id}", f"POST /cancel/{job_id}"), job_id)

    def run_sync(self, job_input: dict, timeout_s: float) -> JobState:
        body = self._call("post", "runsync", "POST /runsync", timeout_s=timeout_s,
                          data=json.dumps({"input": job_input}))
        return _state_from(body, str(body.get("id", "")))


class LocalApi:
    """The worker's local API at `url` (e.g. http://localhost:8000)."""

    # The local API takes any size, but mimics RunPod's limit so that what works here works there.
    body_limit_bytes = 10 * MB

    def __init__(self, url: str, timeout_s: float = 60):
        self.url = url.rstrip("/")
        self.name = self.url
        self.timeout_s = timeout_s
        self._runs: dict[str, _LocalRun] = {}

    def _request(self, method: str, path: str, what: str, timeout_s: float | None = None,
                 **kwargs) -> requests.Response:
        try:
            return requests.request(method, f"{self.url}{path}", timeout=timeout_s or self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"{what}: could not reach the local API at {self.url} ({exc}); start it with "
                           "`python handler.py --rp_serve_api` (or `make serve`)") from None

    def submit(self, job_input: dict) -> str:
        body = _json(self._request("post", "/run", "POST /run", json={"input": job_input}), "POST /run")
        job_id = str(body["id"])
        # The local /status runs the job: from here on it is this thread's request.
        run = self._runs[job_id] = _LocalRun(self, job_id)
        run.start()
        return job_id

    def state(self, job_id: str) -> JobState:
        run = self._runs.get(job_id)
        if run is not None and run.result is not None:
            return run.result
        response = self._request("get", f"/progress/{job_id}", f"GET /progress/{job_id}")
        if response.status_code == 404 and run is None:
            raise ApiError(f"no job {job_id!r} on the worker at {self.url} (it keeps only its recent jobs, and "
                           "only while it runs)")
        if response.status_code == 404:
            return JobState(job_id, "IN_QUEUE")
        body = _json(response, f"GET /progress/{job_id}")
        state = JobState(job_id, body["status"], progress=body.get("progress"), error=body.get("error"))
        if state.final and run is not None:
            # The job has ended; its result is on its way in the answer to our /status request.
            run.join(timeout=RESULT_WAIT_S)
            if run.result is not None:
                return run.result
        return state

    def cancel(self, job_id: str) -> JobState:
        response = self._request("post", f"/cancel/{job_id}", f"POST /cancel/{job_id}")
        if response.status_code == 409:  # already ended
            return self.state(job_id)
        body = _json(response, f"POST /cancel/{job_id}")
        return JobState(job_id, body["status"], progress=body.get("progress"))

    def run_sync(self, job_input: dict, timeout_s: float) -> JobState:
        response = self._request("post", "/runsync", "POST /runsync", timeout_s=timeout_s, json={"input": job_input})
        body = _json(response, "POST /runsync")
        return _state_from(body, str(body.get("id", "")))


class _LocalRun(threading.Thread):
    """POST /status/<id> of the local API, which returns when the job has ended."""

    def __init__(self, api: LocalApi, job_id: str):
        super().__init__(name=f"local-status-{job_id}", daemon=True)
        self.api, self.job_id = api, job_id
        self.result: JobState | None = None

    def run(self) -> None:
        what = f"POST /status/{self.job_id}"
        try:
            body: Any = _json(self.api._request("post", f"/status/{self.job_id}", what, timeout_s=24 * 3600), what)
            self.result = _state_from(body, self.job_id)
        except ApiError as exc:
            self.result = JobState(self.job_id, "FAILED", error=str(exc))
        if self.result.status == "FAILED":
            # A job cancelled through POST /cancel ends FAILED in the SDK's answer; the worker knows better.
            try:
                known = self.api._request("get", f"/progress/{self.job_id}", "GET /progress")
                if known.ok and known.json().get("status") == "CANCELLED":
                    self.result.status = "CANCELLED"
            except (ApiError, ValueError):
                pass
