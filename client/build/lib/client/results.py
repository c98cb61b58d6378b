"""The finished video, wherever the worker put it: base64 in the response, a bucket URL, or a file on the
worker's network volume (which this machine usually cannot reach: then the client says what to do)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import requests


class ResultError(RuntimeError):
    """The video could not be written to the requested file; the message says why and what to do."""


def save_video(output: dict, dest: Path) -> str:
    """Writes the job's video to dest; returns a line saying where it came from."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        if output.get("video"):
            partial.write_bytes(base64.b64decode(output["video"]))
            source = "from the response (base64)"
        elif output.get("video_url"):
            _download(output["video_url"], partial)
            source = "downloaded from the bucket"
        elif output.get("video_path"):
            path = Path(output["video_path"])
            if not path.is_file():
                raise ResultError(
                    f"the video is on the worker's network volume at {path}, which this machine cannot read. "
                    "Fetch it from a pod or machine with that volume attached (for example with runpodctl, or the "
                    "volume's S3-compatible API), or run the job with --destination bucket (configure BUCKET_* "
                    "on the endpoint) or --destination base64 (short videos) so that it comes back to you")
            shutil.copyfile(path, partial)  # the local API on this machine: the volume is a local folder
            source = f"copied from the worker's volume ({path})"
        else:
            raise ResultError("the response holds no video (no video, video_url or video_path)")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return f"video: {dest} ({dest.stat().st_size / 1e6:.2f} MB, {source})"


def _download(url: str, dest: Path) -> None:
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            if not response.ok:
                raise ResultError(f"downloading the video from the bucket answered HTTP {response.status_code}: "
                                  f"{response.text[:300]}")
            with open(dest, "wb") as f:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
    except requests.RequestException as exc:
        raise ResultError(f"downloading the video from the bucket failed: {exc}") from None
