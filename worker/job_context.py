"""What every step of one job needs: the request and its template, the instances, the settings, the job's
folder, where progress goes, the signal that stops it and when it started."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from comfy_manager import InstancePool
from worker.config import WorkerSettings
from worker.progress import JobProgressTracker
from worker.request import JobRequest
from worker.templates import WorkflowTemplate


@dataclass(frozen=True)
class JobContext:
    request: JobRequest
    template: WorkflowTemplate
    pool: InstancePool
    settings: WorkerSettings
    job_id: str
    work_dir: Path  # the job's own folder, removed when the job ends
    progress: JobProgressTracker  # each step reports here; it publishes the job's progress
    cancel: threading.Event  # set: stop every segment of the job
    started_at: float  # time.monotonic() when the job began (the response's times are relative to it)
