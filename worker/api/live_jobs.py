"""The jobs this worker process runs or ran lately: each one's latest progress, how it ended, and the signal
that cancels it. handler.py writes it; the local API's own routes (worker/api/local_api.py) read it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from comfy_manager import CancelEvent
from worker.progress.tracker import JobProgress

JobStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
KEEP_FINISHED = 100  # finished jobs remembered, so a poll just after the end still finds its job


class LiveJobReport(BaseModel):
    """GET /progress/{id} of the local API: RunPod's status names, the progress as RunPod's /status shows
    it while the job runs, and the error of a job that failed."""

    id: str
    status: JobStatus
    progress: JobProgress | None = None
    error: str | None = None


@dataclass
class _LiveJob:
    cancel: CancelEvent = field(default_factory=CancelEvent)  # also set by the job itself when a segment fails
    cancel_requested: bool = False  # by the API or RunPod: the job's end is CANCELLED, not FAILED
    status: JobStatus = "IN_QUEUE"
    progress: JobProgress | None = None
    error: str | None = None


class LiveJobs:
    def __init__(self):
        self._jobs: OrderedDict[str, _LiveJob] = OrderedDict()
        self._lock = threading.Lock()

    def started(self, job_id: str) -> CancelEvent:
        """The job began; returns its cancel signal (already set if it was cancelled while queued)."""
        with self._lock:
            job = self._jobs.setdefault(job_id, _LiveJob())
            job.status = "IN_PROGRESS"
            return job.cancel

    def update(self, job_id: str, progress: JobProgress) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id].progress = progress

    def ended(self, job_id: str, error: str | None) -> None:
        with self._lock:
            job = self._jobs.setdefault(job_id, _LiveJob())
            job.error = error
            job.status = "COMPLETED" if error is None else "CANCELLED" if job.cancel_requested else "FAILED"
            if job.status == "CANCELLED" and job.progress is not None:
                job.progress = _cancelled(job.progress)
            self._jobs.move_to_end(job_id)
            finished = [i for i, j in self._jobs.items() if j.status in ("COMPLETED", "FAILED", "CANCELLED")]
            for old in finished[:-KEEP_FINISHED]:
                del self._jobs[old]

    def cancel(self, job_id: str, queued: bool = False) -> LiveJobReport | None:
        """Cancels a running job (or one still `queued` in the API, which then ends as soon as it starts);
        None if no such job runs or waits. The answer says CANCELLED, as RunPod's /cancel does; the job's own
        report says so once it has stopped (its segments interrupted, its files removed)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None and queued:
                job = self._jobs[job_id] = _LiveJob()
            if job is None or job.status not in ("IN_QUEUE", "IN_PROGRESS"):
                return None
            job.cancel_requested = True
            job.cancel.set()
            return LiveJobReport(id=job_id, status="CANCELLED", progress=job.progress)

    def report(self, job_id: str) -> LiveJobReport | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return LiveJobReport(id=job_id, status=job.status, progress=job.progress, error=job.error)

    def reports(self) -> list[LiveJobReport]:
        with self._lock:
            ids = list(self._jobs)
        return [r for r in (self.report(i) for i in ids) if r is not None]


def _cancelled(progress: JobProgress) -> JobProgress:
    """The job's last progress once it was cancelled: every segment not done is `cancelled`, with no node
    running and no ETA."""
    segments = [s if s.state == "done" else s.model_copy(update={"state": "cancelled", "node": None, "node_steps": None})
                for s in progress.segments]
    done = sum(s.state == "done" for s in segments)
    return progress.model_copy(update={"segments": segments, "eta_s": None,
                                       "message": f"cancelled: {done}/{len(segments)} segments done"})
