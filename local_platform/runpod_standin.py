"""A stand-in for RunPod's serverless platform, for tests only (RunPod itself is not reachable from here).

It speaks both sides of RunPod's queue, as the runpod SDK (1.12.0) and RunPod's documentation describe them:

- to clients, the API of one endpoint: `POST /v2/<endpoint>/run` ({"input": ...} -> {"id", "status":
  "IN_QUEUE"}), `POST /v2/<endpoint>/runsync`, `GET /v2/<endpoint>/status/<id>` (IN_QUEUE, IN_PROGRESS with
  the worker's latest progress update as `output`, COMPLETED with the result as `output`, FAILED with
  `error`, CANCELLED), `POST /v2/<endpoint>/cancel/<id>`; a bearer API key; request bodies up to 10 MB
  (/run) and 20 MB (/runsync);
- to the worker, the channels the SDK polls in production mode (`python handler.py` with the variables of
  worker_env()): `GET /job-take/<worker>` (a job, or 204 after a short wait), `POST /job-done/<worker>?id=
  <job>&isStream=false` (progress updates with status IN_PROGRESS, then the result), and `GET
  /job-stop/<worker>` ({"jobsToStop": [...]} for cancelled jobs, or 204).

So a test runs the real worker under the real SDK, and the real client against it, end to end. Every
progress update the worker sent is kept (`updates`), so a test can see what /status showed.

Several workers may poll one stand-in, as the workers of one endpoint do: each job records which worker
took it, and a cancel reaches that worker's stop channel only. A job's `policy` is kept as RunPod keeps it:
`ttl` (ms) removes a job still queued after it (its /status then answers 404), `executionTimeout` (ms) ends
one running longer (TIMED_OUT, and a stop to its worker).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MB = 1024**2
LONG_POLL_S = 1.0  # how long job-take and job-stop hold a request before answering 204


@dataclass
class StandInJob:
    id: str
    input: dict
    status: str = "IN_QUEUE"
    output: object = None
    error: str | None = None
    progress: object = None  # the latest progress update
    updates: list = field(default_factory=list)  # every progress update, in order
    stop_pod: bool = False  # the result asked RunPod to replace the worker (the SDK's stopPod, from refresh_worker)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    policy: dict = field(default_factory=dict)
    worker: str | None = None  # the worker that took it

    def status_body(self) -> dict:
        body: dict = {"id": self.id, "status": self.status,
                      "delayTime": round(1000 * ((self.started or time.monotonic()) - self.created))}
        if self.started is not None:
            body["executionTime"] = round(1000 * ((self.ended or time.monotonic()) - self.started))
        if self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        elif self.status == "COMPLETED":
            body["output"] = self.output
        elif self.status in ("FAILED", "TIMED_OUT"):
            body["error"] = self.error
        return body


class RunPodStandIn:
    def __init__(self, endpoint_id: str = "standin-endpoint", api_key: str = "standin-key"):
        self.endpoint_id, self.api_key = endpoint_id, api_key
        self.jobs: dict[str, StandInJob] = {}
        self.queue: deque[str] = deque()
        self.to_stop: dict[str, list[str]] = {}  # worker -> jobs to stop there
        self.stops_delivered: list[str] = []
        self.takes = 0  # job-take polls seen (the worker is up once there is one)
        self.takes_by: dict[str, int] = {}  # the same, per worker
        self.expired: list[str] = []  # jobs removed by their ttl
        self.held: set[str] = set()  # workers given no job (busy, as far as the queue is concerned)
        self.lock = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def api_base(self) -> str:
        """What RUNPOD_ENDPOINT_BASE_URL is set to for clients (as https://api.runpod.ai/v2 on RunPod)."""
        return f"{self.url}/v2"

    def worker_env(self, worker_id: str = "standin-worker") -> dict[str, str]:
        """The variables RunPod sets on its machines, pointing the SDK at this stand-in."""
        return {"RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=standin",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID?id=$ID&gpu=standin",
                "RUNPOD_POD_ID": worker_id, "RUNPOD_ENDPOINT_ID": self.endpoint_id}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the platform's side ------------------------------------------------------------------------

    def submit(self, job_input: dict, policy: dict | None = None) -> StandInJob:
        with self.lock:
            job = StandInJob(f"{uuid.uuid4()}-u1", job_input, policy=dict(policy or {}))
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self.lock.notify_all()
            return job

    def cancel(self, job_id: str) -> StandInJob:
        with self.lock:
            job = self.jobs[job_id]
            if job.status == "IN_QUEUE":
                self.queue.remove(job_id)
            elif job.status == "IN_PROGRESS":
                self.to_stop.setdefault(job.worker, []).append(job_id)
            if job.status in ("IN_QUEUE", "IN_PROGRESS"):
                job.status, job.ended = "CANCELLED", time.monotonic()
            self.lock.notify_all()
            return job

    def take(self, worker: str = "standin-worker") -> StandInJob | None:
        with self.lock:
            self.takes += 1
            self.takes_by[worker] = self.takes_by.get(worker, 0) + 1
            self._expire()
            if not self.queue or worker in self.held:
                self.lock.wait(LONG_POLL_S)
            self._expire()
            if not self.queue or worker in self.held:
                return None
            job = self.jobs[self.queue.popleft()]
            job.status, job.started, job.worker = "IN_PROGRESS", time.monotonic(), worker
            return job

    def hold(self, workers) -> None:
        """Gives these workers no job from now on (an empty list: every worker takes jobs again)."""
        with self.lock:
            self.held = set(workers)

    def _expire(self) -> None:
        """What RunPod does with a job's policy: ttl for a queued job, executionTimeout for a running one."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            ttl, limit = job.policy.get("ttl"), job.policy.get("executionTimeout")
            if job.status == "IN_QUEUE" and ttl and now - job.created > ttl / 1000:
                self.queue.remove(job.id)
                del self.jobs[job.id]
                self.expired.append(job.id)
            elif job.status == "IN_PROGRESS" and limit and now - job.started > limit / 1000:
                job.status, job.error, job.ended = "TIMED_OUT", "execution timeout exceeded", now
                self.to_stop.setdefault(job.worker, []).append(job.id)
                self.lock.notify_all()

    def done(self, job_id: str, body: dict) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.status not in ("IN_PROGRESS",):
                return  # cancelled meanwhile: RunPod keeps the CANCELLED status
            if body.get("status") == "IN_PROGRESS":
                job.progress = body.get("output")
                job.updates.append(body.get("output"))
            elif body.get("error") is not None:
                job.status, job.error, job.ended = "FAILED", body["error"], time.monotonic()
                job.stop_pod = bool(body.get("stopPod"))
            else:
                job.status, job.output, job.ended = "COMPLETED", body.get("output"), time.monotonic()
                job.stop_pod = bool(body.get("stopPod"))
            self.lock.notify_all()

    def stops(self, worker: str = "standin-worker") -> list[str]:
        with self.lock:
            self._expire()
            if not self.to_stop.get(worker):
                self.lock.wait(LONG_POLL_S)
            stops = self.to_stop.pop(worker, [])
            self.stops_delivered.extend(stops)
            return stops

    def expire(self) -> bool:
        """Applies the jobs' policies now (False: for use in a condition)."""
        with self.lock:
            self._expire()
        return False

    def wait_final(self, job_id: str, timeout_s: float) -> StandInJob:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.jobs[job_id].status in ("IN_QUEUE", "IN_PROGRESS") and time.monotonic() < deadline:
                self.lock.wait(0.5)
            return self.jobs[job_id]

    # -- HTTP ----------------------------------------------------------------------------------------

    def _handler_class(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _public(self, method: str, parts: list[str]) -> None:
                if self.headers.get("Authorization") != f"Bearer {standin.api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return
                action, job_id = parts[0], (parts[1] if len(parts) > 1 else None)
                if method == "POST" and action in ("run", "runsync"):
                    size = int(self.headers.get("Content-Length") or 0)
                    limit = 10 * MB if action == "run" else 20 * MB
                    if size > limit:
                        self._body()
                        self._send(413, {"error": f"request body of {size} bytes exceeds {limit} bytes"})
                        return
                    body = json.loads(self._body())
                    job = standin.submit(body["input"], body.get("policy"))
                    if action == "runsync":
                        job = standin.wait_final(job.id, 90)
                    self._send(200, job.status_body() if action == "runsync" else {"id": job.id, "status": job.status})
                elif standin.expire() or job_id not in standin.jobs:
                    self._send(404, {"error": "request does not exist"})
                elif method == "GET" and action == "status":
                    self._send(200, standin.jobs[job_id].status_body())
                elif method == "POST" and action == "cancel":
                    self._send(200, {"id": job_id, "status": standin.cancel(job_id).status})
                else:
                    self._send(404, {"error": "no such route"})

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                if len(parts) >= 3 and parts[0] == "v2" and parts[1] == standin.endpoint_id:
                    self._public(method, parts[2:])
                elif parts and parts[0] == "job-take" and method == "GET":
                    job = standin.take(parts[1] if len(parts) > 1 else "standin-worker")
                    self._send(204) if job is None else self._send(200, {"id": job.id, "input": job.input})
                elif parts and parts[0] == "job-done" and method == "POST":
                    job_id = parse_qs(url.query)["id"][0]
                    standin.done(job_id, json.loads(self._body()))
                    self._send(200, {})
                elif parts and parts[0] == "job-stop" and method == "GET":
                    stops = standin.stops(parts[1] if len(parts) > 1 else "standin-worker")
                    self._send(200, {"jobsToStop": stops}) if stops else self._send(204)
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler
