"""Joins segment videos into one mp4: overlaps cross-faded, every frame encoded once, the original audio
muxed in, frame-exact.

The output is cut into chunks (plan_chunks): pieces of each segment's body (the frames no other segment
has) and one cross-fade per overlap. Each chunk is its own short H.264 encode, started as soon as the
segments it needs have arrived, several at once and at a lower CPU priority than the ComfyUI instances
(which keep generating meanwhile). finish() joins the chunks with the concat demuxer by stream copy
(one encoder, one set of settings, every chunk starting on a key frame) and adds the audio, which was
encoded to AAC while the segments generated. What is left once the last segment lands is that segment's
chunks, encoded in parallel, and the copy.

A chunk's decoder seeks into its segment file rather than decoding it from the start (SaveSegmentVideo
writes a key frame every second or two). Memory does not grow with video length: bodies go file to file
inside ffmpeg; only cross-fade frames pass through Python, as raw yuv420p (a linear blend on the Y, U and
V planes is the same blend as on RGB).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from worker.errors import JobFailed
from worker.ffmpeg_calls import run, start
from worker.planner import SegmentPlan
from worker.request import OutputOptions

log = logging.getLogger(__name__)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
MIN_CHUNK_FRAMES = 40  # a body is split into at most one piece per encoder, none shorter than this


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    busy_seconds: float  # what the stitch work would take alone: chunk encodes over the encoders, plus the join


@dataclass(frozen=True)
class Chunk:
    """Output frames [start, end): from one segment (one source) or a cross-fade of two (two sources)."""

    start: int
    end: int
    sources: tuple[int, ...]  # segment indices

    @property
    def frames(self) -> int:
        return self.end - self.start


def frame_rate(fps: float) -> str:
    """fps as the exact fraction ffmpeg expects (29.97 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def crossfade(previous: np.ndarray, following: np.ndarray, position: int, overlap: int) -> np.ndarray:
    """Frame `position` (0-based) of an overlap of `overlap` frames: a linear fade from previous to following."""
    weight = (position + 1) * 256 // (overlap + 1)  # following's share in 1/256ths, never 0 or 256
    mixed = previous.astype(np.uint16) * (256 - weight) + following.astype(np.uint16) * weight + 128
    return (mixed >> 8).astype(np.uint8)


def plan_chunks(plan: SegmentPlan, encoders: int) -> list[Chunk]:
    """The output cut into body pieces and cross-fades, in frame order.

    A segment's arrival can start its body pieces and the cross-fade with the segment before it: the
    body is split so that these are at most `encoders` chunks (none under MIN_CHUNK_FRAMES), and the
    segment that lands last is stitched in one round of all encoders at once.
    """
    chunks: list[Chunk] = []
    for segment in plan.segments:
        start = segment.start + plan.overlap_with_previous(segment)
        end = segment.end - plan.overlap_with_next(segment)
        slots = encoders - (1 if plan.overlap_with_previous(segment) else 0)
        pieces = max(1, min(slots, (end - start) // MIN_CHUNK_FRAMES))
        bounds = [start + (end - start) * k // pieces for k in range(pieces + 1)]
        chunks += [Chunk(a, b, (segment.index,)) for a, b in zip(bounds, bounds[1:]) if b > a]
        if plan.overlap_with_next(segment):
            chunks.append(Chunk(end, segment.end, (segment.index, segment.index + 1)))
    return chunks


class Stitcher:
    """Encodes chunks as their segments arrive (in any order); finish() joins them into the result.

    Owns `folder` (chunk files, the AAC audio) and removes it in close().
    """

    def __init__(self, plan: SegmentPlan, folder: Path, audio: Path, fps: float, width: int, height: int,
                 options: OutputOptions, encoders: int | None = None):
        self.plan, self.folder, self.fps, self.width, self.height, self.options = plan, folder, fps, width, height, options
        cores = os.cpu_count() or 1
        self.encoders = encoders or max(2, cores // 4)
        self.threads = max(1, cores // self.encoders)  # x264 threads per chunk encode
        self.chunks = plan_chunks(plan, self.encoders)
        self.segments: dict[int, Path] = {}
        self.encodes: dict[Chunk, Future] = {}
        self.encode_seconds = 0.0
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self.executor = ThreadPoolExecutor(self.encoders, thread_name_prefix="stitch")
        self.audio = self.executor.submit(self._encode_audio, audio)  # needs no segment: done early

    def add_segment(self, index: int, path: Path) -> None:
        """Segment `index` exists at `path`: start every chunk that now has what it needs."""
        with self.lock:
            self.segments[index] = path
            for chunk in self.chunks:
                if chunk not in self.encodes and all(i in self.segments for i in chunk.sources):
                    self.encodes[chunk] = self.executor.submit(self._encode, chunk)

    def finish(self, dest: Path) -> StitchResult:
        """Waits for every chunk, joins them by stream copy with the AAC audio into dest (faststart)."""
        try:
            missing = sorted(s.index for s in self.plan.segments if s.index not in self.segments)
            if missing:
                raise JobFailed(f"stitch: segment(s) {missing} never arrived")
            files = [self.encodes[chunk].result() for chunk in self.chunks]
            joined = time.monotonic()
            listing = self.folder / "chunks.txt"
            listing.write_text("".join(f"file '{f.name}'\n" for f in files))
            video = ffmpeg.input(str(listing), format="concat", safe=0).video
            sound = ffmpeg.input(str(self.audio.result())).audio
            run(ffmpeg.output(video, sound, str(dest), c="copy", movflags="+faststart"), "join the chunks", nice=True)
            join_s = time.monotonic() - joined
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            self.close()
        busy = self.encode_seconds / self.encoders + join_s
        log.info("stitched %d frames from %d chunks (%d encoders x %d threads): %.2f s of encoding, join %.2f s",
                 self.plan.total_frames, len(self.chunks), self.encoders, self.threads, self.encode_seconds, join_s)
        return StitchResult(dest, self.plan.total_frames, busy)

    def close(self) -> None:
        """Stops (cancelling chunks not yet started) and removes the folder; safe to call twice."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the work ----------------------------------------------------------------------------------

    def _encode_audio(self, audio: Path) -> Path:
        dest = self.folder / "audio.m4a"
        run(ffmpeg.input(str(audio)).audio.output(str(dest), acodec="aac",
                                                  audio_bitrate=f"{self.options.audio_bitrate_kbps}k"),
            "encode the audio", nice=True)
        return dest

    def _encode(self, chunk: Chunk) -> Path:
        started = time.monotonic()
        dest = self.folder / f"chunk_{chunk.start:07d}.mp4"
        if len(chunk.sources) == 1:
            segment = self.plan.segments[chunk.sources[0]]
            frames = self._frames_of(self.segments[segment.index], chunk.start - segment.start, chunk.frames)
            run(frames.output(str(dest), **self._codec()), f"encode frames {chunk.start}-{chunk.end}", nice=True)
        else:
            self._encode_crossfade(chunk, dest)
        if _count_frames(dest) != chunk.frames:
            segment = self.plan.segments[chunk.sources[-1]]
            path = self.segments[segment.index]
            raise JobFailed(f"segment video {path.name} has {_count_frames(path)} frames, expected {segment.frames}")
        with self.lock:
            self.encode_seconds += time.monotonic() - started
        return dest

    def _encode_crossfade(self, chunk: Chunk, dest: Path) -> None:
        before, after = (self.plan.segments[i] for i in chunk.sources)
        tail = list(self._raw_frames(before.index, chunk.start - before.start, chunk.frames))
        encoder = start(ffmpeg.input("pipe:", format="rawvideo", pix_fmt="yuv420p", s=f"{self.width}x{self.height}",
                                     framerate=frame_rate(self.fps)).output(str(dest), **self._codec()),
                        nice=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            head = self._raw_frames(after.index, 0, chunk.frames)
            for position, (first, second) in enumerate(zip(tail, head, strict=True)):
                encoder.stdin.write(crossfade(first, second, position, chunk.frames).tobytes())
            encoder.stdin.close()
        except BaseException:
            encoder.kill()
            encoder.wait()
            raise
        error = encoder.stderr.read().decode(errors="replace")
        if encoder.wait() != 0:
            raise JobFailed(f"ffmpeg could not encode the cross-fade {chunk.start}-{chunk.end}: {error.strip()[-500:]}")

    def _frames_of(self, path: Path, first: int, count: int):
        """Frames [first, first + count) of a segment video on the fps grid, scaled to the output size.

        Like segment_media.cut_video: -copyts keeps the source's timestamps, so the fps filter numbers
        frames from the start of the file whatever the seek, and trim picks them by number. The seek,
        half a frame early, only saves decoding: ffmpeg decodes from the key frame before it.
        """
        seek = max(0.0, (first - 0.5) / self.fps)
        return (ffmpeg.input(str(path), ss=seek, copyts=None).video
                .filter("fps", fps=frame_rate(self.fps))
                .filter("trim", start_pts=first, end_pts=first + count)
                .filter("setpts", "PTS-STARTPTS")
                .filter("scale", self.width, self.height))

    def _raw_frames(self, index: int, first: int, count: int) -> Iterator[np.ndarray]:
        """Frames [first, first + count) of segment `index` as flat yuv420p arrays; raises if there are fewer."""
        path = self.segments[index]
        frame_bytes = self.width * self.height * 3 // 2
        decoder = start(self._frames_of(path, first, count).output("pipe:", format="rawvideo", pix_fmt="yuv420p",
                                                                   vframes=count),
                        nice=True, stdout=subprocess.PIPE)
        _widen_pipe(decoder.stdout)
        produced = 0
        try:
            while produced < count:
                data = decoder.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                yield np.frombuffer(data, dtype=np.uint8)
                produced += 1
        finally:
            decoder.stdout.close()
            decoder.kill()
            decoder.wait()
        if produced < count:
            segment = self.plan.segments[index]
            raise JobFailed(f"segment video {path.name} has {first + produced} frames, expected {segment.frames}")

    def _codec(self) -> dict:
        # The same settings for every chunk, so that their streams join by a plain copy.
        return {"vcodec": "libx264", "preset": self.options.preset, "crf": self.options.crf, "pix_fmt": "yuv420p",
                "r": frame_rate(self.fps), "threads": self.threads, "an": None}


def stitch_segments(plan: SegmentPlan, segment_files: list[Path], audio: Path, dest: Path, fps: float,
                    width: int, height: int, options: OutputOptions, encoders: int | None = None) -> StitchResult:
    """Every segment at hand: stitches them into dest (what a job does while its segments generate)."""
    stitcher = Stitcher(plan, dest.parent / f".{dest.stem}_chunks", audio, fps, width, height, options, encoders)
    try:
        for segment, path in zip(plan.segments, segment_files, strict=True):
            stitcher.add_segment(segment.index, path)
    except BaseException:
        stitcher.close()
        raise
    return stitcher.finish(dest)


# -- ffmpeg plumbing -------------------------------------------------------------------------------

def _count_frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: a 720p frame then crosses in one piece, not in 20 wake-ups."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # the limit in /proc/sys/fs/pipe-max-size is lower; the default pipe still works
