"""Delivering the finished video: base64 in the response, a presigned bucket URL, or a file on the volume.

RunPod caps what a response may carry (about 10 MB for /run, 20 MB for /runsync), so a long or large
video cannot come back as base64. `output.destination` picks how the mp4 leaves the worker, through
resolve_destination(), which a job calls twice: before any GPU time is spent, with the estimated size
(check_deliverable), and at delivery, with the real one (deliver).

- "auto" (default): the bucket when BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and
  BUCKET_SECRET_ACCESS_KEY are all set; else base64 when it fits MAX_RESPONSE_MB; else the network
  volume (OUTPUT_VOLUME_DIR) when its parent folder exists; else the job is refused before any GPU time
  is spent, or, if the real file turns out bigger than estimated, at delivery.
- "base64": always in the response; refused if it would not fit.
- "bucket": uploaded to the bucket (multipart once it is larger than BUCKET_PART_MB), as
  `<BUCKET_PREFIX>/<job_id>.mp4` with content type video/mp4; a presigned GET URL is returned.
- "volume": copied to OUTPUT_VOLUME_DIR/<job_id>.mp4 through a `.partial` name; the path is returned.

Which bucket: BUCKET_NAME when set (BUCKET_ENDPOINT_URL is then used as given); otherwise the first
path part of BUCKET_ENDPOINT_URL (`https://host/my-bucket` -> bucket "my-bucket" on endpoint
`https://host`, further path parts go in front of the key); otherwise an AWS virtual-hosted URL
(`https://my-bucket.s3.us-east-1.amazonaws.com`, the form RunPod's own docs show) gives the bucket from
the host name. The region is BUCKET_REGION, else the one in an `*.s3.<region>.*` host, else us-east-1.

Credentials never appear in log lines or error messages: every text that leaves this module about the
bucket goes through _redact, and the endpoint URL itself is never echoed (it may carry user:password).

A new destination is a Destination subclass with a `name`, registered in DESTINATIONS and named in
DESTINATION_NAMES (worker/request/job_request.py), where requests may then name it in output.destination.
"""

from __future__ import annotations

import base64
import logging
import math
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlparse

from worker.request.settings import WorkerSettings
from worker.request.errors import JobFailed, JobInputError
from worker.media.bucket import MAX_PRESIGN_EXPIRY_S, BucketTarget, _redact, _s3_client, bucket_target  # noqa: F401
from worker.request.job_request import DESTINATION_NAMES

if TYPE_CHECKING:
    from worker.output.stitch import OutputFormat

log = logging.getLogger(__name__)

MB = 1024**2
BUCKET_ENV = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"
# Size model constants; see estimate_mp4_bytes.
BPP_AT_REF_CRF = 0.20
REF_CRF = 18
CRF_STEPS_PER_DOUBLING = 6
MAX_BPP = 12.0  # raw 8-bit yuv420p; x264 never needs more than the uncompressed frame
CONTAINER_OVERHEAD = 1.03
# The fastest presets skip most of x264's analysis and spend more bits for the same quality.
PRESET_FACTOR = {"ultrafast": 2.5, "superfast": 1.75}
RESPONSE_OVERHEAD_BYTES = 64 * 1024  # the rest of the JSON response (timings, segment reports)


@dataclass(frozen=True)
class Delivery:
    video: str | None = None  # base64 mp4
    video_url: str | None = None  # presigned bucket URL
    video_path: str | None = None  # file on the volume


def estimate_mp4_bytes(width: int, height: int, frames: int, fps: float, crf: int,
                       audio_bitrate_kbps: int, preset: str = "veryfast") -> int:
    """A deliberately high estimate of the stitched mp4's size, to decide delivery before generating.

    Model: x264's bitrate at a constant rate factor scales with the pixel count and roughly doubles for
    every 6 CRF steps down (the rate factor is logarithmic in the quantiser: +6 QP halves the bits).

        bits per pixel  bpp = min(MAX_BPP, BPP_AT_REF_CRF * 2 ** ((REF_CRF - crf) / CRF_STEPS_PER_DOUBLING)
                                           * PRESET_FACTOR.get(preset, 1))
        video bytes     = bpp(crf) * width * height * frames / 8
        audio bytes     = audio_bitrate_kbps * 1000 / 8 * frames / fps     (AAC at the requested bitrate)
        mp4 bytes       = (video + audio) * CONTAINER_OVERHEAD

    Constants: BPP_AT_REF_CRF = 0.20 at REF_CRF = 18, CRF_STEPS_PER_DOUBLING = 6, MAX_BPP = 12 (raw
    yuv420p), CONTAINER_OVERHEAD = 1.03, PRESET_FACTOR = 2.5 for "ultrafast", 1.75 for "superfast", 1 for
    the slower presets. Calibration (x264, 512x512, 25 fps, crf 19) on ffmpeg's testsrc2, a busy synthetic
    pattern that compresses worse than a talking head: 0.33 bpp ultrafast, 0.24 superfast, 0.15
    veryfast, 0.16 medium, against 0.45 / 0.31 / 0.18 / 0.18 from the model. A talking-head clip is well
    under that, so a job is refused only when it would plausibly not fit; the real size is checked again
    at delivery.
    """
    bpp = min(MAX_BPP, BPP_AT_REF_CRF * 2 ** ((REF_CRF - crf) / CRF_STEPS_PER_DOUBLING)
              * PRESET_FACTOR.get(preset, 1))
    video = bpp * width * height * frames / 8
    audio = audio_bitrate_kbps * 1000 / 8 * frames / max(fps, 1e-6)
    return int(math.ceil((video + audio) * CONTAINER_OVERHEAD))


def response_bytes(mp4_bytes: int) -> int:
    """What a response carrying this mp4 as base64 weighs."""
    return 4 * math.ceil(mp4_bytes / 3) + RESPONSE_OVERHEAD_BYTES


def fits_response(mp4_bytes: int, settings: WorkerSettings) -> bool:
    return response_bytes(mp4_bytes) <= settings.max_response_bytes


def volume_available(settings: WorkerSettings) -> bool:
    return settings.output_volume_dir.parent.is_dir()


def too_big_error(mp4_bytes: int, settings: WorkerSettings) -> JobInputError:
    size_mb = response_bytes(mp4_bytes) / MB
    limit_mb = settings.max_response_bytes / MB
    return JobInputError("output", f"the result would be about {size_mb:.0f} MB, over the {limit_mb:.0f} MB a "
                                   f"response can carry; set {BUCKET_ENV} (or use destination 'volume' with "
                                   f"a network volume)")


class Destination(ABC):
    """Where a finished mp4 goes: check() refuses, naming what to set, a result it cannot take; deliver()
    hands the file over."""

    name: ClassVar[str]  # as output.destination names it

    def __init__(self, settings: WorkerSettings):
        self.settings = settings

    @abstractmethod
    def check(self, mp4_bytes: int) -> None:
        """Raises JobInputError if a result of this size cannot go here."""

    @abstractmethod
    def deliver(self, path: Path, job_id: str) -> Delivery:
        """Hands the mp4 over; raises JobFailed if that fails."""


class Base64(Destination):
    name = "base64"

    def check(self, mp4_bytes: int) -> None:
        if not fits_response(mp4_bytes, self.settings):
            raise too_big_error(mp4_bytes, self.settings)

    def deliver(self, path: Path, job_id: str) -> Delivery:
        return Delivery(video=base64.b64encode(path.read_bytes()).decode())


class Bucket(Destination):
    name = "bucket"

    def check(self, mp4_bytes: int) -> None:
        if not self.settings.bucket_configured:
            raise JobInputError("output", f"destination 'bucket' needs {BUCKET_ENV} set on the endpoint")
        bucket_target(self.settings)  # a bucket name must be found in the settings

    def deliver(self, path: Path, job_id: str) -> Delivery:
        return Delivery(video_url=upload_to_bucket(path, job_id, self.settings))


class Volume(Destination):
    name = "volume"

    def check(self, mp4_bytes: int) -> None:
        if not volume_available(self.settings):
            raise JobInputError("output", f"destination 'volume' needs a network volume: "
                                          f"{self.settings.output_volume_dir.parent} does not exist; attach one to "
                                          f"the endpoint or use destination 'bucket'")

    def deliver(self, path: Path, job_id: str) -> Delivery:
        return Delivery(video_path=str(write_to_volume(path, job_id, self.settings)))


DESTINATIONS: dict[str, type[Destination]] = {kind.name: kind for kind in (Base64, Bucket, Volume)}
if tuple(DESTINATIONS) != DESTINATION_NAMES:
    raise RuntimeError(f"requests may name {DESTINATION_NAMES}, but the destinations here are {tuple(DESTINATIONS)}")


def resolve_destination(choice: str, mp4_bytes: int, settings: WorkerSettings) -> Destination:
    """The destination output.destination `choice` ("auto" or a name in DESTINATIONS) means for a result of
    mp4_bytes; raises JobInputError, naming what to set, if the result cannot go there."""
    if choice == "auto":
        if settings.bucket_configured:
            choice = "bucket"
        elif fits_response(mp4_bytes, settings) or not volume_available(settings):
            choice = "base64"  # which refuses it, with the fix, if it does not fit
        else:
            log.info("the result (about %.0f MB) will not fit a response: it goes to the volume",
                     response_bytes(mp4_bytes) / MB)
            choice = "volume"
    destination = DESTINATIONS[choice](settings)
    destination.check(mp4_bytes)
    return destination


def check_deliverable(choice: str, output: OutputFormat, frames: int, settings: WorkerSettings) -> None:
    """Before any GPU time is spent: raises JobInputError if a result of this format and length could not be
    delivered (its size estimated high)."""
    resolve_destination(choice, estimate_mp4_bytes(output.width, output.height, frames, output.fps, output.crf,
                                                   output.audio_bitrate_kbps, output.preset), settings)


def deliver(path: Path, choice: str, job_id: str, settings: WorkerSettings) -> Delivery:
    """Hands the finished mp4 over the way output.destination `choice` (and the settings) say."""
    return resolve_destination(choice, path.stat().st_size, settings).deliver(path, job_id)


def write_to_volume(path: Path, job_id: str, settings: WorkerSettings) -> Path:
    """Copies the result onto the volume; never leaves a half-written file under any name."""
    dest = settings.output_volume_dir / f"{job_id}.mp4"
    partial = dest.with_name(dest.name + ".partial")
    try:
        settings.output_volume_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, partial)
        partial.replace(dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise JobFailed(f"could not write the result to {dest}: {exc.strerror or exc}") from None
    return dest


# ---------------------------------------------------------------------------------------------- bucket


def upload_to_bucket(path: Path, job_id: str, settings: WorkerSettings) -> str:
    """Uploads the mp4 (multipart above one part's size) and returns a presigned GET URL for it."""
    from boto3.s3.transfer import TransferConfig

    target = bucket_target(settings)
    key = "/".join(p for p in (target.key_prefix, f"{job_id}.mp4") if p)
    transfer = TransferConfig(multipart_threshold=settings.bucket_part_bytes,
                              multipart_chunksize=settings.bucket_part_bytes, max_concurrency=4, use_threads=True)
    expiry = max(1, min(settings.bucket_url_expiry_s, MAX_PRESIGN_EXPIRY_S))
    try:
        client = _s3_client(settings, target)
        client.upload_file(str(path), target.bucket, key, ExtraArgs={"ContentType": "video/mp4"}, Config=transfer)
        url = client.generate_presigned_url("get_object", Params={"Bucket": target.bucket, "Key": key},
                                            ExpiresIn=expiry)
    except Exception as exc:  # boto3, botocore and s3transfer each raise their own kinds
        raise JobFailed(_redact(f"upload of the result to bucket {target.bucket!r} failed: "
                                f"{type(exc).__name__}: {exc}", settings)) from None
    log.info("uploaded %.1f MB to bucket %r as %s (URL valid %d s)", path.stat().st_size / MB, target.bucket,
             key, expiry)
    return url
