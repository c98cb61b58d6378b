"""What a media file holds (ffprobe), and whether it is the kind of file a field expects.

Before ffprobe, the first bytes of the file are read (sniff) for formats that ffmpeg 5.1 cannot decode but
that people send all the time: HEIC photos (iPhone), animated WebP. Those are refused with what to send
instead. AVIF stills, which ffmpeg reads as a one-frame AV1 "video", count as images.

Durations: a video's is the container's, or where the container declares none (MediaRecorder's WebM) the
span of its packets' timestamps. An audio file's declared duration can be an estimate from its bitrate
(raw ADTS AAC, MP3 without a Xing header): inputs.py measures the real length by decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.request.errors import JobInputError
from worker.media.ffmpeg import DEFAULT_LIMITS, Limits, ProbeError, probe as ffprobe

_IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "tiff", "gif", "jpeg2000", "pgm", "ppm", "pam", "jpegxl"}
# What to send instead of a refused format, per field.
SEND = {"image": "a JPEG, PNG, WebP or AVIF image", "video": "an MP4, MOV, MKV, MPEG-TS or WebM video",
        "audio": "WAV, MP3, AAC, M4A, Ogg/Opus or FLAC audio", "audio_2": "WAV, MP3, AAC, M4A, Ogg/Opus or FLAC audio"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    duration_s: float  # of the audio stream if there is one, else of the video (as the container says)
    video_codec: str | None
    audio_codec: str | None
    video_duration_s: float = 0.0  # the video stream's: declared, or measured from its packets
    brand: str = ""  # ISO-BMFF major brand ("isom", "qt  ", "avif"), where there is one
    video_frames: int | None = None  # as the container counts them (nb_frames), where it does
    video_start_s: float = 0.0  # timestamp of the video's first frame (MPEG-TS: often 1.4 s; edit lists)
    height: int = 0
    color_space: str | None = None  # the video's matrix tag (bt709, bt470bg, smpte170m), None if untagged

    @property
    def is_still_image(self) -> bool:
        if self.brand == "avif" and self.video_frames in (None, 1):
            return True  # AVIF: one AV1 frame in an ISO-BMFF file
        if self.format_name == "gif":
            return self.video_frames == 1  # a GIF of one frame is a picture, of several an animation
        return self.video_codec in _IMAGE_CODECS and (
            self.format_name.endswith("_pipe") or self.format_name == "image2" or self.duration_s == 0)


def probe(field: str, path: Path, limits: Limits = DEFAULT_LIMITS) -> MediaInfo:
    """ffprobe's view of the file; a format the worker cannot use, or a file ffprobe cannot read, is an input
    error on `field`."""
    refuse_unsupported(field, path)
    try:
        info = ffprobe(path, limits)
    except ProbeError as exc:
        raise JobInputError(field, f"not a readable image, video or audio file ({exc}); send {SEND[field]}") from None
    streams = info.get("streams", [])
    fmt = info.get("format", {})
    # A cover picture in an audio file (an MP3's ID3 art) is not a video.
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not (s.get("disposition") or {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    video_frames = _int(video.get("nb_frames")) if video else None
    if video is not None and fmt.get("format_name") == "gif":  # GIFs declare no frame count: count them
        video_frames = _int((ffprobe(path, limits, "-select_streams", "v:0", "-count_packets", "-show_entries",
                                     "stream=nb_read_packets").get("streams") or [{}])[0].get("nb_read_packets"))
    video_duration = _duration(fmt, video) if video else 0.0
    if video is not None and video_duration <= 0 and not fmt.get("format_name", "").endswith("_pipe"):
        video_duration = packet_span(path, limits)  # no declared duration (MediaRecorder's WebM): its packets'
    return MediaInfo(
        format_name=fmt.get("format_name", ""),
        duration_s=_duration(fmt, audio) if audio else video_duration,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        video_duration_s=video_duration,
        brand=(fmt.get("tags") or {}).get("major_brand", "").strip(),
        video_frames=video_frames,
        video_start_s=_float(video.get("start_time")) if video else 0.0,
        height=_int(video.get("height")) or 0 if video else 0,
        color_space=(video.get("color_space") if video and video.get("color_space") not in (None, "unknown")
                     else None),
    )


def packet_span(path: Path, limits: Limits = DEFAULT_LIMITS) -> float:
    """Seconds from the first video packet's timestamp to the end of the last one (0 if it has none)."""
    try:
        packets = ffprobe(path, limits, "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time")
    except ProbeError:
        return 0.0
    starts = [(_float(p.get("pts_time")), _float(p.get("duration_time"))) for p in packets.get("packets", [])
              if p.get("pts_time") not in (None, "N/A")]
    if not starts:
        return 0.0
    return max(t + d for t, d in starts) - min(t for t, _ in starts)


def refuse_unsupported(field: str, path: Path) -> None:
    """JobInputError("unsupported format X; send Y") for formats recognised by their first bytes that the
    worker cannot use."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        major, compatible = head[8:12], {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
        if major in _HEIF_BRANDS and not {b"avif", b"avis"} & ({major} | compatible):
            raise JobInputError(field, "unsupported format HEIC/HEIF (the iPhone's photo format), which this "
                                       f"worker's ffmpeg cannot decode; send {SEND[field]}")
        if major == b"avis" and field == "image":
            raise JobInputError(field, f"unsupported format animated AVIF for a still image; send {SEND[field]}, "
                                       "or the animation as `video` with input_type 'video'")
    if head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and head[20] & 0x02:
        raise JobInputError(field, "unsupported format animated WebP (ffmpeg cannot decode its frames); "
                                   f"send {SEND[field]}")


def _duration(fmt: dict, stream: dict) -> float:
    for source in (stream, fmt):
        value = _float(source.get("duration"))
        if value > 0:
            return value
    return 0.0


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
    if info.video_duration_s <= 0:
        raise JobInputError(field, "the video has zero length")


def require_audio_stream(field: str, info: MediaInfo) -> None:
    if info.audio_codec is None:
        raise JobInputError(field, f"expected audio, but the file has no audio stream ({_kind(info)})")


def require_audio(field: str, info: MediaInfo, max_duration_s: float) -> None:
    """An audio stream of a length (as declared: inputs.read_audio measures it by decoding) within the limit."""
    require_audio_stream(field, info)
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
