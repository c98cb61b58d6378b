"""Joins segment videos into one mp4: overlaps cross-faded, every frame encoded once, the original
audio muxed in, frame-exact.

The output is cut into chunks: the body of each segment (frames no other segment has), split into
pieces of about CHUNK_FRAMES, and each overlap (a cross-fade of the two segments' shared frames). Each
chunk is its own H.264 encode, started as soon as the segments it needs exist, several at once; the
chunks are then joined by the concat demuxer with a stream copy (same encoder settings, each chunk
starting on a key frame). So the stitch runs while later segments are still generating, and what is
left once the last segment lands is that segment's chunks, encoded in parallel.

Memory does not grow with video length: bodies go file to file inside ffmpeg; only a cross-fade's
frames pass through Python, as raw yuv420p (a linear blend on Y, U and V is the same blend as on RGB).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from worker.errors import JobFailed
from worker.planner import SegmentPlan
from worker.request import OutputOptions

log = logging.getLogger(__name__)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
CHUNK_FRAMES = 150  # pieces of a segment body that encode in parallel
QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    seconds: float  # from the last segment's arrival to the finished mp4


@dataclass(frozen=True)
class Chunk:
    """Output frames [start, end): from one segment (`sources` has one entry) or a cross-fade of two."""

    start: int
    end: int
    sources: tuple[int, ...]  # segment indices


def frame_rate(fps: float) -> str:
    """fps as the exact fraction ffmpeg expects (29.97 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def crossfade(previous: np.ndarray, following: np.ndarray, position: int, overlap: int) -> np.ndarray:
    """Frame `position` (0-based) of an overlap of `overlap` frames: a linear fade from previous to following."""
    weight = (position + 1) * 256 // (overlap + 1)  # following's share in 1/256ths, never 0 or 256
    mixed = previous.astype(np.uint16) * (256 - weight) + following.astype(np.uint16) * weight + 128
    return (mixed >> 8).astype(np.uint8)


def plan_chunks(plan: SegmentPlan, chunk_frames: int = CHUNK_FRAMES) -> list[Chunk]:
    """The output cut into segment-body pieces and cross-fades, in frame order."""
    chunks: list[Chunk] = []
    for segment in plan.segments:
        start = segment.start + plan.overlap_with_previous(segment)
        end = segment.end - plan.overlap_with_next(segment)
        pieces = max(1, round((end - start) / chunk_frames))
        bounds = [start + (end - start) * k // pieces for k in range(pieces + 1)]
        chunks += [Chunk(a, b, (segment.index,)) for a, b in zip(bounds, bounds[1:]) if b > a]
        if plan.overlap_with_next(segment):
            chunks.append(Chunk(end, segment.end, (segment.index, segment.index + 1)))
    return chunks


class Stitcher:
    """Encodes chunks as their segments arrive (in any order); finish() joins them and muxes the audio."""

    def __init__(self, plan: SegmentPlan, folder: Path, fps: float, width: int, height: int,
                 options: OutputOptions, parallel: int | None = None):
        self.plan, self.folder, self.fps, self.width, self.height, self.options = plan, folder, fps, width, height, options
        folder.mkdir(parents=True, exist_ok=True)
        cores = os.cpu_count() or 1
        self.parallel = parallel or max(2, cores // 4)
        self.threads = max(1, cores // self.parallel)  # x264 threads per chunk encode
        self.chunks = plan_chunks(plan)
        self.segments: dict[int, Path] = {}
        self.encodes: dict[Chunk, Future] = {}
        self.executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="stitch")
        self.lock = threading.Lock()
        self.last_arrival = time.monotonic()

    def add_segment(self, index: int, path: Path) -> None:
        """Segment `index` exists at `path`: start every chunk that now has what it needs."""
        with self.lock:
            self.segments[index] = path
            self.last_arrival = time.monotonic()
            for chunk in self.chunks:
                if chunk not in self.encodes and all(i in self.segments for i in chunk.sources):
                    self.encodes[chunk] = self.executor.submit(self._encode, chunk)

    def finish(self, audio: Path, dest: Path) -> StitchResult:
        """Waits for every chunk, joins them with a stream copy and muxes the audio as AAC."""
        try:
            if len(self.encodes) < len(self.chunks):
                raise JobFailed("stitch: not every segment arrived")
            files = [self.encodes[chunk].result() for chunk in self.chunks]
            listing = self.folder / "chunks.txt"
            listing.write_text("".join(f"file '{f.name}'\n" for f in files))
            video = ffmpeg.input(str(listing), format="concat", safe=0).video
            sound = ffmpeg.input(str(audio)).audio
            output = ffmpeg.output(video, sound, str(dest), vcodec="copy", acodec="aac",
                                   audio_bitrate=f"{self.options.audio_bitrate_kbps}k", movflags="+faststart")
            _run(output, "join the chunks")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            self.close()
        seconds = time.monotonic() - self.last_arrival
        log.info("stitched %d frames in %d chunks; %.2f s after the last segment", self.plan.total_frames,
                 len(self.chunks), seconds)
        return StitchResult(dest, self.plan.total_frames, seconds)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- one chunk -------------------------------------------------------------------------------

    def _encode(self, chunk: Chunk) -> Path:
        dest = self.folder / f"chunk_{chunk.start:07d}.mp4"
        if len(chunk.sources) == 1:
            segment = self.plan.segments[chunk.sources[0]]
            source = (ffmpeg.input(str(self.segments[segment.index])).video
                      .filter("trim", start_frame=chunk.start - segment.start, end_frame=chunk.end - segment.start)
                      .filter("setpts", "PTS-STARTPTS")
                      .filter("scale", self.width, self.height))
            _run(source.output(str(dest), vframes=chunk.end - chunk.start, **self._codec()),
                 f"encode frames {chunk.start}-{chunk.end}")
        else:
            self._encode_crossfade(chunk, dest)
        frames = _count_frames(dest)
        if frames != chunk.end - chunk.start:
            raise JobFailed(f"stitch: frames {chunk.start}-{chunk.end} came out as {frames} frames; a segment "
                            f"video is shorter than planned")
        return dest

    def _encode_crossfade(self, chunk: Chunk, dest: Path) -> None:
        before, after = (self.plan.segments[i] for i in chunk.sources)
        overlap = chunk.end - chunk.start
        frame_bytes = self.width * self.height * 3 // 2
        tail = list(_decode(self.segments[before.index], chunk.start - before.start, overlap,
                            self.width, self.height, frame_bytes))
        encoder = (ffmpeg.input("pipe:", format="rawvideo", pix_fmt="yuv420p", s=f"{self.width}x{self.height}",
                                framerate=frame_rate(self.fps))
                   .output(str(dest), **self._codec())
                   .global_args(*QUIET)
                   .run_async(pipe_stdin=True, pipe_stderr=True, overwrite_output=True))
        try:
            head = _decode(self.segments[after.index], 0, overlap, self.width, self.height, frame_bytes)
            for position, (first, second) in enumerate(zip(tail, head, strict=True)):
                encoder.stdin.write(crossfade(first, second, position, overlap).tobytes())
            encoder.stdin.close()
        except BaseException:
            encoder.kill()
            encoder.wait()
            raise
        error = encoder.stderr.read().decode(errors="replace")
        if encoder.wait() != 0:
            raise JobFailed(f"ffmpeg could not encode the cross-fade {chunk.start}-{chunk.end}: {error[-500:]}")

    def _codec(self) -> dict:
        # Every chunk with the same settings, so their streams join by a plain copy.
        return {"vcodec": "libx264", "preset": self.options.preset, "crf": self.options.crf, "pix_fmt": "yuv420p",
                "r": frame_rate(self.fps), "threads": self.threads, "an": None}


def _run(stream, what: str) -> None:
    try:
        stream.global_args(*QUIET).run(capture_stdout=True, capture_stderr=True, overwrite_output=True)
    except ffmpeg.Error as exc:
        raise JobFailed(f"ffmpeg could not {what}: {exc.stderr.decode(errors='replace').strip()[-800:]}") from None


def _count_frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def _decode(path: Path, first: int, count: int, width: int, height: int, frame_bytes: int):
    """Yields frames [first, first + count) of path as flat yuv420p arrays; raises if there are fewer."""
    decoder = (
        ffmpeg.input(str(path)).video
        .filter("trim", start_frame=first, end_frame=first + count)
        .filter("setpts", "PTS-STARTPTS")
        .filter("scale", width, height)
        # passthrough: raw output has no timestamps to honour; never duplicate or drop a frame
        .output("pipe:", format="rawvideo", pix_fmt="yuv420p", vframes=count, fps_mode="passthrough")
        .global_args(*QUIET)
        .run_async(pipe_stdout=True)
    )
    try:
        fcntl.fcntl(decoder.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)  # a frame per read, not per 64 KiB
    except OSError:
        pass
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
        raise JobFailed(f"segment video {path.name} has {first + produced} frames, expected at least {first + count}")


def stitch_segments(plan: SegmentPlan, segment_files: list[Path], audio: Path, dest: Path, fps: float,
                    width: int, height: int, options: OutputOptions) -> StitchResult:
    """All segments at hand: stitch them into dest (the same as the job does while generating)."""
    stitcher = Stitcher(plan, dest.parent / f"{dest.stem}_chunks", fps, width, height, options)
    try:
        for segment, path in zip(plan.segments, segment_files, strict=True):
            stitcher.add_segment(segment.index, path)
    except BaseException:
        stitcher.close()
        raise
    return stitcher.finish(audio, dest)
