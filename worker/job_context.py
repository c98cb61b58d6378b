"""What every step of one job needs: the request and its template, the instances, the settings, the job's
folder, where progress goes and the signal that stops it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from comfy_manager import InstancePool
from worker.config import WorkerSettings
from worker.request import JobRequest
from worker.templates import WorkflowTemplate

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class JobContext:
    request: JobRequest
    template: WorkflowTemplate
    pool: InstancePool
    settings: WorkerSettings
    job_id: str
    work_dir: Path  # the job's own folder, removed when the job ends
    progress: ProgressFn  # short messages for the caller ("segment 1/2 done")
    cancel: threading.Event  # set: stop every segment of the job
