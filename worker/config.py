"""The worker's settings, read once from the environment (README lists every variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in value.split(":") if p)


def _default_workflows(value: str) -> tuple[tuple[str, str], ...]:
    """DEFAULT_WORKFLOWS="image/single=NAME,video/multi=NAME,..." over the built-in defaults."""
    chosen = dict(WorkerSettings.default_workflows)
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, _, name = item.partition("=")
        if key.strip() not in chosen or not name.strip():
            raise ValueError(f"DEFAULT_WORKFLOWS: {item!r} is not one of {sorted(chosen)}=NAME")
        chosen[key.strip()] = name.strip()
    return tuple(chosen.items())


@dataclass(frozen=True)
class WorkerSettings:
    job_work_dir: Path = Path("/tmp/worker-jobs")
    allowed_input_roots: tuple[Path, ...] = (Path("/runpod-volume"),)
    output_volume_dir: Path = Path("/runpod-volume/outputs")
    max_input_bytes: int = 1024**3
    max_duration_s: float = 1800.0
    allow_private_urls: bool = False
    download_timeout_s: float = 120.0
    segment_timeout_s: float = 600.0  # plus segment_timeout_per_frame_s for each frame of the segment
    segment_timeout_per_frame_s: float = 20.0
    segment_retries: int = 2
    stitch_lead: float | None = None  # None: learned from recent jobs (worker/rates.py)
    max_concurrent_jobs: int = 1  # jobs a worker takes at once; their segments share the instances
    # Template per (input_type, person_count) when a request names none. The CPU demo templates by
    # default; the Docker image points these at the InfiniteTalk templates.
    default_workflows: tuple[tuple[str, str], ...] = (
        ("image/single", "still"), ("image/multi", "still"), ("video/single", "restyle"), ("video/multi", "restyle"))
    # Delivery (worker/outputs.py). A response carries at most max_response_bytes of base64 video.
    max_response_bytes: int = 15 * 1024**2
    # S3-compatible bucket, the env names RunPod's own upload helper reads. Secrets stay out of repr().
    bucket_endpoint_url: str | None = field(default=None, repr=False)
    bucket_access_key_id: str | None = field(default=None, repr=False)
    bucket_secret_access_key: str | None = field(default=None, repr=False)
    bucket_name: str | None = None
    bucket_region: str | None = None
    bucket_prefix: str = "videos"
    bucket_url_expiry_s: int = 7 * 24 * 3600
    bucket_part_bytes: int = 16 * 1024**2

    def default_workflow(self, input_type: str, person_count: str) -> str:
        return dict(self.default_workflows)[f"{input_type}/{person_count}"]

    @property
    def bucket_configured(self) -> bool:
        return bool(self.bucket_endpoint_url and self.bucket_access_key_id and self.bucket_secret_access_key)

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
            segment_timeout_s=float(env("SEGMENT_TIMEOUT_S", "600")),
            segment_timeout_per_frame_s=float(env("SEGMENT_TIMEOUT_PER_FRAME_S", "20")),
            segment_retries=int(env("SEGMENT_RETRIES", "2")),
            stitch_lead=None if env("STITCH_LEAD", "auto") == "auto" else float(env("STITCH_LEAD")),
            max_concurrent_jobs=int(env("MAX_CONCURRENT_JOBS", "1")),
            default_workflows=_default_workflows(env("DEFAULT_WORKFLOWS", "")),
            max_response_bytes=int(float(env("MAX_RESPONSE_MB", "15")) * 1024**2),
            bucket_endpoint_url=env("BUCKET_ENDPOINT_URL") or None,
            bucket_access_key_id=env("BUCKET_ACCESS_KEY_ID") or None,
            bucket_secret_access_key=env("BUCKET_SECRET_ACCESS_KEY") or None,
            bucket_name=env("BUCKET_NAME") or None,
            bucket_region=env("BUCKET_REGION") or None,
            bucket_prefix=env("BUCKET_PREFIX", "videos").strip("/"),
            bucket_url_expiry_s=int(env("BUCKET_URL_EXPIRY_S", str(7 * 24 * 3600))),
            bucket_part_bytes=max(5, int(float(env("BUCKET_PART_MB", "16")))) * 1024**2,
        )
