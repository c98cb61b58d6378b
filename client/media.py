"""Media fields of a request from what the user gave: a URL (or data URI) goes as it is; a local file goes
inline as base64 while the request body stays under the API's limit, and the rest goes through a bucket
(client/bucket.py) as presigned URLs, biggest first. Without a bucket, media that does not fit is an
error that says what to do."""

from __future__ import annotations

import base64
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from client.bucket import VARIABLES, Bucket

MB = 1024**2
MEDIA_FIELDS = ("image", "video", "audio", "audio_2")


class MediaError(ValueError):
    """A media argument cannot be sent; the message names the field and the fix."""


@dataclass(frozen=True)
class Placement:
    field: str
    source: str  # what the user gave
    how: str  # "url", "inline" or "bucket"
    bytes: int  # of the file (0 for a URL)


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://", "data:"))


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def encoded_size(size: int) -> int:
    return (size + 2) // 3 * 4 + 40  # base64 plus the data URI's head


def place_media(job_input: dict, media: dict[str, str], body_limit_bytes: int,
                bucket: Bucket | None) -> list[Placement]:
    """Puts each media argument into job_input (in place) and returns how each was sent."""
    files: dict[str, Path] = {}
    placements = []
    for field, value in media.items():
        if is_url(value):
            job_input[field] = value
            placements.append(Placement(field, value, "url", 0))
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise MediaError(f"--{field.replace('_', '-')}: no file at {value} (give a local file or an http(s) URL)")
        files[field] = path
    # What the body holds without the local files: the budget for inlining them.
    used = len(json.dumps({"input": job_input}).encode())
    for field, path in sorted(files.items(), key=lambda item: item[1].stat().st_size):
        size = path.stat().st_size
        if used + encoded_size(size) <= body_limit_bytes:
            job_input[field] = data_uri(path)
            used += encoded_size(size)
            placements.append(Placement(field, str(path), "inline", size))
        elif bucket is not None:
            job_input[field] = bucket.upload(path)
            used += len(job_input[field]) + 16
            placements.append(Placement(field, str(path), "bucket", size))
        else:
            raise MediaError(
                f"{field}: {path.name} ({size / MB:.1f} MB, {encoded_size(size) / MB:.1f} MB as base64) does not fit in "
                f"the request body with the rest (the API takes about {body_limit_bytes / MB:.0f} MB). Set "
                f"{', '.join(VARIABLES)} (and BUCKET_NAME if the URL names no bucket) so the client uploads it to "
                "your bucket and sends a URL, or pass an http(s) URL of the file instead")
    return placements
