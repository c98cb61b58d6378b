"""Joins segment videos into one mp4: overlaps cross-faded, encoded once, the original audio muxed in.

Frames stream through: each segment is decoded in turn and only the frames of one overlap are held,
so memory does not grow with the length of the video. Frames travel as raw yuv420p, the format of both
the segment files and the result, so no pixel-format conversion happens anywhere; a cross-fade is the
same linear blend on the Y, U and V planes as it would be on RGB.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import ffmpeg
import numpy as np

from worker.errors import JobFailed
from worker.planner import SegmentPlan
from worker.request import OutputOptions

log = logging.getLogger(__name__)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    seconds: float
    busy_seconds: float  # seconds not spent waiting for the next segment to exist


class _Waiting:
    """Wraps the segment iterator to count how long the stitcher waited on it."""

    def __init__(self, files: Iterable[Path]):
        self.files = iter(files)
        self.seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self) -> Path:
        started = time.monotonic()
        try:
            return next(self.files)
        finally:
            self.seconds += time.monotonic() - started


def frame_rate(fps: float) -> str:
    """fps as the exact fraction ffmpeg expects (29.97 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def crossfade(previous: np.ndarray, following: np.ndarray, position: int, overlap: int) -> np.ndarray:
    """Frame `position` (0-based) of an overlap of `overlap` frames: a linear fade from previous to following."""
    weight = (position + 1) * 256 // (overlap + 1)  # following's share in 1/256ths, never 0 or 256
    mixed = previous.astype(np.uint16) * (256 - weight) + following.astype(np.uint16) * weight + 128
    return (mixed >> 8).astype(np.uint8)


def stitch_segments(plan: SegmentPlan, segment_files: Iterable[Path], audio: Path, dest: Path,
                    fps: float, width: int, height: int, options: OutputOptions) -> StitchResult:
    """Writes dest: exactly plan.total_frames frames at fps, H.264 yuv420p, faststart, audio as AAC.

    segment_files may be a generator that blocks until each segment exists: encoding starts with the
    first segment while the others are still being generated.
    """
    started = time.monotonic()
    segment_files = _Waiting(segment_files)
    encoder = _open_encoder(audio, dest, fps, width, height, options)
    frame_bytes = width * height * 3 // 2  # yuv420p: a full-size Y plane, quarter-size U and V
    held: list[np.ndarray] = []  # the previous segment's last frames, waiting for the cross-fade
    written = 0
    try:
        for segment, path in zip(plan.segments, segment_files, strict=True):
            overlap_in = plan.overlap_with_previous(segment)
            overlap_out = plan.overlap_with_next(segment)
            incoming: list[np.ndarray] = []
            for position, data in enumerate(_decode_frames(path, width, height, segment.frames, frame_bytes)):
                if position < overlap_in:
                    data = crossfade(held[position], _as_frame(data), position, overlap_in).tobytes()
                elif position >= segment.frames - overlap_out:
                    incoming.append(_as_frame(data))
                    continue
                encoder.stdin.write(data)  # frames outside overlaps pass through untouched
                written += 1
            held = incoming
        encoder.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        encoder.kill()
        encoder.wait()
        dest.unlink(missing_ok=True)
        raise
    error = encoder.stderr.read().decode(errors="replace")
    if encoder.wait() != 0:
        dest.unlink(missing_ok=True)
        raise JobFailed(f"ffmpeg could not encode the result: {error.strip()[-800:]}")
    if written != plan.total_frames:
        raise JobFailed(f"stitched {written} frames, expected {plan.total_frames}")
    seconds = time.monotonic() - started
    busy = seconds - segment_files.seconds
    log.info("stitched %d frames from %d segments: %.2f s of work (%.0f frames/s)", written, len(plan.segments),
             busy, written / max(busy, 1e-6))
    return StitchResult(dest, written, seconds, busy)


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: a 720p frame then crosses in one piece, not in 20 wake-ups."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # the limit in /proc/sys/fs/pipe-max-size is lower; the default pipe still works


def _open_encoder(audio: Path, dest: Path, fps: float, width: int, height: int,
                  options: OutputOptions) -> subprocess.Popen:
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="yuv420p", s=f"{width}x{height}",
                         framerate=frame_rate(fps))
    sound = ffmpeg.input(str(audio)).audio
    output = ffmpeg.output(
        video, sound, str(dest), vcodec="libx264", preset=options.preset, crf=options.crf,
        pix_fmt="yuv420p", acodec="aac", audio_bitrate=f"{options.audio_bitrate_kbps}k",
        movflags="+faststart",
    ).global_args("-nostdin", "-hide_banner", "-loglevel", "error")
    encoder = output.run_async(pipe_stdin=True, pipe_stderr=True, overwrite_output=True)
    _widen_pipe(encoder.stdin)
    return encoder


def _as_frame(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _decode_frames(path: Path, width: int, height: int, count: int, frame_bytes: int):
    """Yields the first `count` frames of path as raw yuv420p bytes, scaled to width x height if needed."""
    decoder = (
        ffmpeg.input(str(path)).video
        .filter("scale", width, height)
        .output("pipe:", format="rawvideo", pix_fmt="yuv420p", vframes=count)
        .global_args("-nostdin", "-loglevel", "error")
        .run_async(pipe_stdout=True)
    )
    _widen_pipe(decoder.stdout)
    produced = 0
    try:
        while produced < count:
            data = decoder.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            yield data
            produced += 1
    finally:
        decoder.stdout.close()
        decoder.kill()
        decoder.wait()
    if produced < count:
        raise JobFailed(f"segment video {path.name} has {produced} frames, expected {count}")
