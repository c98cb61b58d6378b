"""The worker's settings, read once from the environment (README lists every variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in value.split(":") if p)


@dataclass(frozen=True)
class WorkerSettings:
    job_work_dir: Path = Path("/tmp/worker-jobs")
    allowed_input_roots: tuple[Path, ...] = (Path("/runpod-volume"),)
    output_volume_dir: Path = Path("/runpod-volume/outputs")
    max_input_bytes: int = 1024**3
    max_duration_s: float = 1800.0
    allow_private_urls: bool = False
    download_timeout_s: float = 120.0
    segment_timeout_s: float = 3600.0
    default_workflow_image: str = "still"
    default_workflow_video: str = "restyle"

    @classmethod
    def from_env(cls) -> "WorkerSettings":
        env = os.environ.get
        return cls(
            job_work_dir=Path(env("JOB_WORK_DIR", "/tmp/worker-jobs")),
            allowed_input_roots=_paths(env("ALLOWED_INPUT_ROOTS", "/runpod-volume")),
            output_volume_dir=Path(env("OUTPUT_VOLUME_DIR", "/runpod-volume/outputs")),
            max_input_bytes=int(float(env("MAX_INPUT_MB", "1024")) * 1024**2),
            max_duration_s=float(env("MAX_DURATION_S", "1800")),
            allow_private_urls=env("ALLOW_PRIVATE_URLS", "0") == "1",
            download_timeout_s=float(env("DOWNLOAD_TIMEOUT_S", "120")),
            segment_timeout_s=float(env("SEGMENT_TIMEOUT_S", "3600")),
            default_workflow_image=env("DEFAULT_WORKFLOW_IMAGE", "still"),
            default_workflow_video=env("DEFAULT_WORKFLOW_VIDEO", "restyle"),
        )
