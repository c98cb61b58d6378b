"""Delivering the finished video: base64 in the response, or a file on the network volume."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from worker.config import WorkerSettings
from worker.request import JobRequest


def deliver(path: Path, request: JobRequest, job_id: str, settings: WorkerSettings) -> tuple[str | None, str | None]:
    """The result as base64, or its path after moving it onto the volume."""
    if request.output.destination == "volume":
        settings.output_volume_dir.mkdir(parents=True, exist_ok=True)
        dest = settings.output_volume_dir / f"{job_id}.mp4"
        partial = dest.with_suffix(".mp4.partial")
        shutil.copyfile(path, partial)
        partial.replace(dest)  # never a half-written file under the final name
        return None, str(dest)
    return base64.b64encode(path.read_bytes()).decode(), None
