"""Delivering the finished video: base64 in the response, or a file on the network volume."""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path

from worker.config import WorkerSettings
from worker.request import JobRequest


@dataclass(frozen=True)
class Delivery:
    video: str | None = None  # base64 mp4
    video_url: str | None = None  # bucket URL
    video_path: str | None = None  # file on the volume


def check_deliverable(request: JobRequest, total_frames: int, settings: WorkerSettings) -> None:
    """Raises JobInputError before any GPU time is spent if the result cannot be returned."""


def deliver(path: Path, request: JobRequest, job_id: str, settings: WorkerSettings) -> Delivery:
    """The result as base64, or its path after moving it onto the volume."""
    if request.output.destination == "volume":
        settings.output_volume_dir.mkdir(parents=True, exist_ok=True)
        dest = settings.output_volume_dir / f"{job_id}.mp4"
        partial = dest.with_suffix(".mp4.partial")
        shutil.copyfile(path, partial)
        partial.replace(dest)  # never a half-written file under the final name
        return Delivery(video_path=str(dest))
    return Delivery(video=base64.b64encode(path.read_bytes()).decode())
