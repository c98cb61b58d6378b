"""What a media file holds (ffprobe), and whether it is the kind of file a field expects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from worker.errors import JobInputError

_IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "tiff", "gif", "jpeg2000", "pgm", "ppm", "pam"}


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    duration_s: float
    video_codec: str | None
    audio_codec: str | None

    @property
    def is_still_image(self) -> bool:
        return self.video_codec in _IMAGE_CODECS and (
            self.format_name.endswith("_pipe") or self.format_name == "image2" or self.duration_s == 0)


def probe(field: str, path: Path) -> MediaInfo:
    """ffprobe's view of the file; a file ffprobe cannot read is an input error on `field`."""
    try:
        info = ffmpeg.probe(str(path))
    except ffmpeg.Error as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] if exc.stderr else []
        raise JobInputError(field, f"not a readable image, video or audio file ({' '.join(detail) or 'ffprobe failed'})") from None
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return MediaInfo(
        format_name=info.get("format", {}).get("format_name", ""),
        duration_s=_duration(info.get("format", {}), audio or video or {}),
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
    )


def _duration(fmt: dict, stream: dict) -> float:
    for source in (stream, fmt):
        try:
            return float(source["duration"])
        except (KeyError, ValueError, TypeError):
            continue
    return 0.0


def require_image(field: str, info: MediaInfo) -> None:
    if info.video_codec is None:
        raise JobInputError(field, f"expected an image, but the file has no picture ({_kind(info)})")
    if not info.is_still_image:
        raise JobInputError(field, f"expected a still image, got a video ({_kind(info)}); use input_type 'video'")


def require_video(field: str, info: MediaInfo) -> None:
    if info.video_codec is None:
        raise JobInputError(field, f"expected a video, but the file has no video stream ({_kind(info)})")
    if info.is_still_image:
        raise JobInputError(field, f"expected a video, got a still image ({info.video_codec}); use input_type 'image'")
    if info.duration_s <= 0:
        raise JobInputError(field, "the video has zero length")


def require_audio(field: str, info: MediaInfo, max_duration_s: float) -> None:
    if info.audio_codec is None:
        raise JobInputError(field, f"expected audio, but the file has no audio stream ({_kind(info)})")
    if info.duration_s <= 0:
        raise JobInputError(field, "the audio has zero length")
    if info.duration_s > max_duration_s:
        raise JobInputError(field, f"the audio lasts {info.duration_s:.1f} s, over the {max_duration_s:.0f} s limit (MAX_DURATION_S)")


def _kind(info: MediaInfo) -> str:
    parts = [info.format_name]
    if info.video_codec:
        parts.append(f"video {info.video_codec}")
    if info.audio_codec:
        parts.append(f"audio {info.audio_codec}")
    return ", ".join(parts)
