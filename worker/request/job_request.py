"""The job's `input`, validated. Unknown fields are rejected by name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.request.errors import JobInputError, describe_validation_error
MEDIA_FIELDS = ("image", "video", "audio", "audio_2")
# Where a result can go; each name is a Destination class in worker/output/delivery.py (a test keeps the two equal).
DESTINATION_NAMES = ("base64", "bucket", "volume")


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # x264 constant rate factor: 0 is lossless, 18 visually lossless, 23 the x264 default.
    crf: int = Field(default=19, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"] = "veryfast"
    audio_bitrate_kbps: int = Field(default=192, ge=32, le=512)
    # auto: bucket if BUCKET_* is set, else base64 if it fits MAX_RESPONSE_MB, else the volume.
    # base64: the mp4 in the response; bucket: uploaded, a presigned URL returned;
    # volume: written under OUTPUT_VOLUME_DIR, the path returned. DESTINATION_NAMES.
    destination: Literal[("auto", *DESTINATION_NAMES)] = "auto"  # type: ignore[valid-type]


class SeamOptions(BaseModel):
    """How neighbouring segments are joined (README: "Seams")."""

    model_config = ConfigDict(extra="forbid")
    # focused: a short blend of blend_frames frames, placed inside the overlap where the two generations
    # differ least and the audio is quietest; linear: a fade across the whole overlap.
    blend: Literal["focused", "linear"] = "focused"
    blend_frames: int = Field(default=10, ge=1, le=200)
    # Match every segment's colours to the job's shared reference (the reference image, or the source
    # frames) in the worker's save node, so that the two sides of a seam cannot drift apart. None: the
    # template's default (on for InfiniteTalk, off where colours are the point, e.g. restyle).
    color_match: bool | None = None

    def span(self, overlap: int) -> int:
        """Frames blended at a seam with this overlap."""
        return overlap if self.blend == "linear" else min(self.blend_frames, overlap)


class JobRequest(BaseModel):
    """One video job: reference media, speech audio, and how to render it."""

    model_config = ConfigDict(extra="forbid")

    workflow: str | None = Field(default=None, description="template name in workflows/; default by input_type")
    input_type: Literal["image", "video"] = "image"
    person_count: Literal["single", "multi"] = "single"
    image: str | None = None
    video: str | None = None
    audio: str | None = None
    audio_2: str | None = None
    # None: the template's own prompt (InfiniteTalk's describe a person talking to the camera).
    prompt: str | None = Field(default=None, max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    seed: int = Field(default=42, ge=0, le=2**53)
    steps: int | None = Field(default=None, ge=1, le=200)
    # A preset of the template (InfiniteTalk: fast = the distill LoRA, 4 steps, one model pass a step;
    # full = 40 steps with text and audio guidance, three passes a step). None: the template's default.
    quality: str | None = Field(default=None, max_length=64)
    # The template's own params over its preset and the GPU-dependent choices (attention_mode, quantization,
    # blocks_to_swap ...: README); unknown names are refused with the list of known ones.
    template_params: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)
    # Video templates: how much of the source each frame is re-generated from (1: all of it); the sampler
    # starts at step round(steps x (1 - denoise)).
    denoise: float = Field(default=0.5, gt=0.0, le=1.0)
    width: int = Field(default=512, ge=64, le=2048, multiple_of=16)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=16)
    fps: float = Field(default=25.0, ge=1.0, le=60.0)
    use_multi_gpu: bool = True
    gpu_count: int | None = Field(default=None, ge=1, le=64)
    # Other workers of the endpoint this job may send segments to (at most FANOUT_MAX_WORKERS; 0: none).
    # None: as many as pay off, up to that setting.
    workers: int | None = Field(default=None, ge=0, le=64)
    overlap_frames: int | None = Field(default=None, ge=0, le=200)
    # Longest segment, in frames (at least the template's shortest): a longer job gets more segments than
    # instances, which queue for them. None: the template's limit.
    max_segment_frames: int | None = Field(default=None, ge=1, le=100_000)
    seams: SeamOptions = SeamOptions()
    output: OutputOptions = OutputOptions()
    # True: check the inputs, plan, and answer with the plan and an estimate for 1..N GPUs; nothing runs.
    dry_run: bool = False

    @model_validator(mode="after")
    def _media_present(self) -> "JobRequest":
        if self.input_type == "image" and not self.image:
            raise ValueError("image: required when input_type is 'image' (base64, data URI, URL or path)")
        if self.input_type == "video" and not self.video:
            raise ValueError("video: required when input_type is 'video' (base64, data URI, URL or path)")
        if not self.audio:
            raise ValueError("audio: required; the output's length follows the audio")
        if self.person_count == "multi" and not self.audio_2:
            raise ValueError("audio_2: required when person_count is 'multi' (the second speaker's audio)")
        if self.person_count == "single" and self.audio_2:
            raise ValueError("audio_2: only used when person_count is 'multi'; remove it or set person_count")
        return self


def parse_request(job_input: Any) -> JobRequest:
    """The job's input as a JobRequest; JobInputError naming each field at fault otherwise."""
    if not isinstance(job_input, dict):
        raise JobInputError("input", "must be a JSON object")
    try:
        return JobRequest.model_validate(job_input)
    except ValidationError as exc:
        field, _, message = describe_validation_error(exc, JobRequest).partition(": ")  # the first field at fault
        raise JobInputError(field, message) from None


def safe_job_id(text: str) -> str:
    """A job id as the worker names its files and folders with it: letters, digits, - and _ (64 at most)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "job"
