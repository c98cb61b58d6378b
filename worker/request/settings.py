"""The worker's settings, each read once from its environment variable (README lists every one).

The ComfyUI instances' settings (COMFYUI_*, COMFY_*) are comfy_manager.PoolSettings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import NoDecode

from comfy_manager.settings import EnvSettings, env
MB = 1024**2
# Template per "input_type/person_count" when a request names none: the CPU demo templates. The Docker
# image points DEFAULT_WORKFLOWS at the InfiniteTalk templates.
BUILT_IN_WORKFLOWS = {"image/single": "still", "image/multi": "still", "video/single": "restyle",
                      "video/multi": "restyle"}


class WorkerSettings(EnvSettings):
    # Jobs and their inputs (worker/media/inputs.py, worker/media/sources.py).
    job_work_dir: Path = env("JOB_WORK_DIR", Path("/tmp/worker-jobs"))  # per-job folders, removed after each job
    allowed_input_roots: Annotated[tuple[Path, ...], NoDecode] = env("ALLOWED_INPUT_ROOTS", (Path("/runpod-volume"),))
    max_input_mb: float = env("MAX_INPUT_MB", 1024.0)  # per media input
    max_duration_s: float = env("MAX_DURATION_S", 1800.0)  # longest audio accepted
    allow_private_urls: bool = env("ALLOW_PRIVATE_URLS", False)  # tests only
    download_timeout_s: float = env("DOWNLOAD_TIMEOUT_S", 120.0)
    # Every ffmpeg/ffprobe the worker runs (worker/media/ffmpeg.py) is stopped past base + per frame it handles.
    ffmpeg_timeout_s: float = env("FFMPEG_TIMEOUT_S", 300.0)
    ffmpeg_timeout_per_frame_s: float = env("FFMPEG_TIMEOUT_PER_FRAME_S", 2.0)
    # Memory the segment planner leaves to the worker, its ffmpeg processes and the system (worker/planning/memory.py).
    memory_reserve_mb: float = env("MEMORY_RESERVE_MB", 2048.0)
    # The RAM the ComfyUI instances may use together; None: what is available when a job is planned.
    memory_budget_mb: float | None = env("MEMORY_BUDGET_MB", None)
    # Templates (worker/templates/template.py).
    default_workflows: Annotated[dict[str, str], NoDecode] = env("DEFAULT_WORKFLOWS", BUILT_IN_WORKFLOWS)
    extra_workflow_dirs: Annotated[tuple[Path, ...], NoDecode] = env("EXTRA_WORKFLOW_DIRS", ())
    # Segments (worker/render/segments.py): a deadline of segment_timeout_s plus segment_timeout_per_frame_s per
    # frame, and how often one is tried again on another instance.
    segment_timeout_s: float = env("SEGMENT_TIMEOUT_S", 600.0)
    segment_timeout_per_frame_s: float = env("SEGMENT_TIMEOUT_PER_FRAME_S", 20.0)
    segment_retries: int = env("SEGMENT_RETRIES", 2)
    stitch_lead: float | None = env("STITCH_LEAD", None)  # "auto" (None): learned (worker/planning/learned.py)
    # Seams move toward speech pauses at a cost of at most this share of the job's generation time
    # (worker/planning/seam_placement.py); 0: seams stay where the balanced plan puts them.
    seam_budget_percent: float = env("SEAM_BUDGET_PERCENT", 3.0, ge=0.0, le=100.0)
    max_concurrent_jobs: int = env("MAX_CONCURRENT_JOBS", 1)  # their segments share the instances
    # Fan-out (worker/render/remote.py): a job may send segments, as segment jobs, to at most
    # fanout_max_workers other workers of the endpoint it runs on (RUNPOD_ENDPOINT_ID, set by RunPod), with an
    # API key from a secret (RUNPOD_API_KEY). 0, or no key: every segment runs on this worker's instances.
    runpod_api_key: str | None = env("RUNPOD_API_KEY", None, repr=False)
    runpod_endpoint_id: str | None = env("RUNPOD_ENDPOINT_ID", None)
    # This worker's id on RunPod (set by RunPod): its jobs' progress names it, and a segment job's parent watch
    # compares it with where the parent runs (worker/render/parent_watch.py).
    runpod_pod_id: str | None = env("RUNPOD_POD_ID", None)
    fanout_max_workers: int = env("FANOUT_MAX_WORKERS", 0, ge=0, le=64)
    # A segment job still queued this long is cancelled and rendered here; one whose progress stops changing
    # this long (its worker died) is taken back too.
    fanout_queue_deadline_s: float = env("FANOUT_QUEUE_DEADLINE_S", 90.0, gt=0)
    fanout_stall_s: float = env("FANOUT_STALL_S", 120.0, gt=0)
    # A segment job asks for its parent's /status this often, and stops where the parent has ended, is queued
    # again or runs on another worker (worker/render/parent_watch.py); 0: never.
    fanout_parent_check_s: float = env("FANOUT_PARENT_CHECK_S", 30.0, ge=0)
    # What a cold worker costs before its first window, besides loading the template's models (its `speed`
    # declares load_s): the planner uses another worker only where it pays off after this.
    fanout_cold_start_s: float = env("FANOUT_COLD_START_S", 20.0, ge=0)
    # A segment job's media go inline while its body stays under this (RunPod's /run takes about 10 MB), else
    # through the bucket (BUCKET_*); without one, such a segment is rendered here.
    fanout_inline_mb: float = env("FANOUT_INLINE_MB", 9.0, gt=0)
    # WIDTHxHEIGHT: before taking work, each instance runs one short job of the default image template at that
    # size (worker/api/warmup.py), so the first job, or segment job, finds the models loaded and compiled.
    warmup: str | None = env("WARMUP_SIZE", None, pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$")
    # Delivery (worker/output/delivery.py). A response carries at most max_response_mb of base64 video.
    max_response_mb: float = env("MAX_RESPONSE_MB", 15.0)
    output_volume_dir: Path = env("OUTPUT_VOLUME_DIR", Path("/runpod-volume/outputs"))
    # S3-compatible bucket, the env names RunPod's own upload helper reads. Secrets stay out of repr().
    bucket_endpoint_url: str | None = env("BUCKET_ENDPOINT_URL", None, repr=False)
    bucket_access_key_id: str | None = env("BUCKET_ACCESS_KEY_ID", None, repr=False)
    bucket_secret_access_key: str | None = env("BUCKET_SECRET_ACCESS_KEY", None, repr=False)
    bucket_name: str | None = env("BUCKET_NAME", None)
    bucket_region: str | None = env("BUCKET_REGION", None)
    bucket_prefix: str = env("BUCKET_PREFIX", "videos")
    bucket_url_expiry_s: int = env("BUCKET_URL_EXPIRY_S", 7 * 24 * 3600)
    bucket_part_mb: float = env("BUCKET_PART_MB", 16.0)  # multipart uploads: parts of at least 5 MB
    # Model files (worker/templates/model_files.py): with require_models, refuse jobs while one is missing.
    require_models: bool = env("REQUIRE_MODELS", False)
    models_manifest: Path | None = env("MODELS_MANIFEST", None)  # None: models/manifest.json
    log_level: str = env("LOG_LEVEL", "INFO")
    # A job's progress (worker/progress/tracker.py) is sent this often, and at once when its stage or a segment's
    # state changes: to RunPod (progress_update, what /status shows), the local API and a parent's segment watch.
    progress_interval_s: float = env("PROGRESS_INTERVAL_S", 1.0, ge=0.1, le=60.0)
    # Set by RunPod on its machines (not in local test or serve-api modes): progress updates have a receiver.
    runpod_webhook_post_output: str | None = env("RUNPOD_WEBHOOK_POST_OUTPUT", None, repr=False)

    @field_validator("allowed_input_roots", "extra_workflow_dirs", mode="before")
    @classmethod
    def _folders(cls, value: Any) -> Any:
        """"a:b" -> (Path("a"), Path("b")); the allowed roots resolved, so that no link leads out of them."""
        if isinstance(value, str):
            value = [part for part in value.split(":") if part]
        return tuple(Path(part) for part in value)

    @field_validator("allowed_input_roots", mode="after")
    @classmethod
    def _resolved(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(path.resolve() for path in value)

    @field_validator("default_workflows", mode="before")
    @classmethod
    def _over_built_ins(cls, value: Any) -> Any:
        """DEFAULT_WORKFLOWS="image/single=NAME,video/multi=NAME,..." over the built-in defaults."""
        if not isinstance(value, str):
            return value
        chosen = dict(BUILT_IN_WORKFLOWS)
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, _, name = item.partition("=")
            if key.strip() not in chosen or not name.strip():
                raise ValueError(f"DEFAULT_WORKFLOWS: {item!r} is not one of {sorted(chosen)}=NAME")
            chosen[key.strip()] = name.strip()
        return chosen

    @field_validator("stitch_lead", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if value == "auto" else value

    @field_validator("bucket_prefix", mode="after")
    @classmethod
    def _no_outer_slashes(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("log_level", mode="after")
    @classmethod
    def _a_level(cls, value: str) -> str:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in levels:
            raise ValueError(f"not a log level: one of {', '.join(levels)}")
        return value.upper()

    @property
    def memory_reserve_bytes(self) -> int:
        return int(self.memory_reserve_mb * MB)

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_mb is None else int(self.memory_budget_mb * MB)

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * MB)

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * MB)

    @property
    def bucket_part_bytes(self) -> int:
        return max(5, int(self.bucket_part_mb)) * MB

    @property
    def fanout_workers(self) -> int:
        """How many other workers a job may use: FANOUT_MAX_WORKERS where the endpoint and a key are known."""
        return self.fanout_max_workers if self.runpod_api_key and self.runpod_endpoint_id else 0

    @property
    def bucket_configured(self) -> bool:
        return bool(self.bucket_endpoint_url and self.bucket_access_key_id and self.bucket_secret_access_key)

    @property
    def on_runpod(self) -> bool:
        return self.runpod_webhook_post_output is not None

    def default_workflow(self, input_type: str, person_count: str) -> str:
        return self.default_workflows[f"{input_type}/{person_count}"]
