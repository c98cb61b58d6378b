"""Each segment's own media, cut with ffmpeg so that an instance decodes only its part."""

from __future__ import annotations

from pathlib import Path

import ffmpeg

from worker.ffmpeg_calls import run
from worker.planner import Segment

# Intermediate clips are near-lossless and as fast to write as x264 allows; they live seconds.
_CLIP_CODEC = {"vcodec": "libx264", "preset": "ultrafast", "crf": 10, "pix_fmt": "yuv420p"}


def loop_video(src: Path, dst: Path, fps: float, total_frames: int) -> Path:
    """A copy of src resampled to fps and looped until it has total_frames frames."""
    stream = ffmpeg.input(str(src), stream_loop=-1).video.filter("fps", fps=fps)
    run(stream.output(str(dst), vframes=total_frames, an=None, **_CLIP_CODEC), "loop the video")
    return dst


def cut_video(src: Path, dst: Path, segment: Segment, fps: float, width: int, height: int) -> Path:
    """Frames [segment.start, segment.end) of src on the fps grid, scaled and cropped to width x height.

    With -copyts the fps filter numbers frames from the start of the source, so trimming by pts picks
    the same frame for a given index whatever segment asks for it; the input seek (1 s early) only
    saves decoding.
    """
    seek = max(0.0, segment.start / fps - 1.0)
    stream = (
        ffmpeg.input(str(src), ss=seek, copyts=None).video
        .filter("fps", fps=fps)
        .filter("trim", start_pts=segment.start, end_pts=segment.end)
        .filter("setpts", "PTS-STARTPTS")
        .filter("scale", width, height, force_original_aspect_ratio="increase")
        .filter("crop", width, height)
        .filter("setsar", 1)
    )
    run(stream.output(str(dst), vframes=segment.frames, an=None, r=fps, **_CLIP_CODEC),
         f"cut frames {segment.start}-{segment.end}")
    return dst


def cut_audio(src: Path, dst: Path, start_s: float, duration_s: float) -> Path:
    """duration_s seconds of src from start_s as WAV, padded with silence where src ends sooner."""
    stream = ffmpeg.input(str(src), ss=start_s).audio.filter("apad", whole_dur=duration_s)
    run(stream.output(str(dst), t=duration_s, acodec="pcm_s16le", vn=None),
         f"cut audio at {start_s:.2f} s")
    return dst


def image_to_png(src: Path, dst: Path) -> Path:
    """The first frame of src as PNG, whatever the source format."""
    run(ffmpeg.input(str(src)).video.output(str(dst), vframes=1), "read the image")
    return dst


def mix_audio(tracks: list[Path], dst: Path) -> Path:
    """The speakers' tracks mixed into one WAV, as long as the longest."""
    inputs = [ffmpeg.input(str(t)).audio for t in tracks]
    mixed = ffmpeg.filter(inputs, "amix", inputs=len(inputs), duration="longest", normalize=0)
    run(mixed.output(str(dst), acodec="pcm_s16le"), "mix the speakers' audio")
    return dst
