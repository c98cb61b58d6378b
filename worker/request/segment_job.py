"""The second kind of job on the same endpoint: a segment job, which one segment of another worker's job (its
parent) is sent as (worker/render/remote.py). It is validated like any request, and more strictly:

- `request` is the parent's request, checked by the same JobRequest rules, with its media replaced by this
  segment's own: its cut audio slices and its frames (or the reference image), inline as data: URIs or as
  http(s) URLs (the bucket's, for media too big for RunPod's request limit). Paths are refused: a segment job
  reaches no file outside its own job folder. It names its template, asks for no dry run and no fan-out:
  a segment job is never fanned out again.
- `segments` is the parent's whole plan (each segment's [start, end)), `index` the one to render: the
  overlaps with its neighbours follow from it exactly as on the parent, so that the save node splits its
  video the same way and the parent's stitch is frame-exact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.request.errors import JobInputError, describe_validation_error
from worker.request.job_request import MEDIA_FIELDS, JobRequest, parse_request

SEGMENT_JOB_KEY = "segment_job"  # a job whose input has this key is a segment job
RESULT_KEY = "segment_result"  # ... and its output has this one


class SegmentJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_job: str = Field(pattern=r"^[A-Za-z0-9_-]{1,80}$")  # the parent's job id (names files and logs)
    parent_worker: str = Field(default="", max_length=120)  # the parent's RUNPOD_POD_ID: logs, and the parent
    # watch (worker/render/parent_watch.py) stops this job where the parent runs on another worker
    request: dict[str, Any]
    segments: list[tuple[int, int]] = Field(min_length=1, max_length=10_000)
    index: int = Field(ge=0)

    @model_validator(mode="after")
    def _plan(self) -> "SegmentJob":
        if self.index >= len(self.segments):
            raise ValueError(f"index: {self.index} is not a segment of the plan (it has {len(self.segments)})")
        start, end = self.segments[0]
        if start != 0:
            raise ValueError("segments: the first segment starts at frame 0")
        for number, (first, last) in enumerate(self.segments):
            if not 0 <= first < last <= 10_000_000:
                raise ValueError(f"segments: segment {number} ({first}-{last}) must have 0 <= start < end")
            if number and not (self.segments[number - 1][0] < first <= self.segments[number - 1][1] < last):
                raise ValueError(f"segments: segment {number} ({first}-{last}) must start inside the previous "
                                 "one and end after it")
        return self


def parse_segment_job(job_input: dict) -> tuple[SegmentJob, JobRequest]:
    """The segment job in `job_input` and its request; JobInputError naming the field at fault otherwise."""
    try:
        job = SegmentJob.model_validate(job_input.get(SEGMENT_JOB_KEY))
    except ValidationError as exc:
        raise JobInputError(SEGMENT_JOB_KEY, describe_validation_error(exc, SegmentJob)) from None
    request = parse_request(job.request)
    where = f"{SEGMENT_JOB_KEY}.request"
    if not request.workflow:
        raise JobInputError(f"{where}.workflow", "a segment job names its template")
    if request.dry_run or request.workers not in (None, 0):
        raise JobInputError(f"{where}.workers", "a segment job is rendered where it is taken: no dry run, no fan-out")
    for field in MEDIA_FIELDS:
        value = getattr(request, field)
        if value and not value.startswith(("data:", "http://", "https://")):
            raise JobInputError(f"{where}.{field}", "a segment job carries its media inline (a data: URI) or as "
                                                    "an http(s) URL, never as a path")
    return job, request


class SegmentPart(BaseModel):
    """One file of a segment's video on its way back: inline (base64), in the bucket under
    segments/<segment job id>/<name>, or on the shared volume in OUTPUT_VOLUME_DIR/segments/<segment job id>/."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,160}$")
    data: str | None = None
    key: str | None = Field(default=None, max_length=400)
    path: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _one_place(self) -> "SegmentPart":
        if sum(value is not None for value in (self.data, self.key, self.path)) != 1:
            raise ValueError("a part is either inline (data), in the bucket (key) or on the volume (path)")
        return self


class SegmentResult(BaseModel):
    """What a segment job answers (worker/segment_job.py), as its parent reads it (worker/render/remote.py)."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    worker: str = Field(max_length=120)
    instance: str = Field(max_length=120)
    gpu: int | None = None
    seconds: float = Field(ge=0)
    comfy_seconds: float = Field(ge=0)
    node_seconds: dict[str, float] = Field(default_factory=dict, max_length=1000)
    attempts: int = Field(ge=1, le=100)
    device_settings: str | None = Field(default=None, max_length=120)
    cold: bool = False
    split: bool
    parts: dict[Literal["head", "body", "tail", "stats"], SegmentPart]
