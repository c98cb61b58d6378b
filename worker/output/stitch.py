"""Joins segment videos into one mp4: overlaps blended, every frame encoded once, the original audio
muxed in, frame-exact; each seam measured for the job's report.

The output is cut into chunks (plan_chunks): pieces of each segment's body (the frames no other segment
has) and one cross-fade per overlap. Each chunk is its own short H.264 encode, started as soon as the
segments it needs have arrived, several at once and at a lower CPU priority than the ComfyUI instances
(which keep generating meanwhile). finish() joins the chunks with the concat demuxer by stream copy
(one encoder, one set of settings, every chunk starting on a key frame) and adds the audio, which was
encoded to AAC while the segments generated. What is left once the last segment lands is that segment's
chunks, encoded in parallel, and the copy.

A segment saved in SaveSegmentVideo's split form (worker/media/segment_format.py) brings its body already
encoded with the output's settings: on arrival the body is checked to be the stream the stitch would
have written (size, rate, frame count, and the same H.264 headers as a reference frame encoded with
the output's settings, once per worker process) and is then one chunk, copied as it is; a body that fails the check is encoded in
pieces like any other. Its raw head and tail feed the cross-fades. What is left once the last segment
lands is then one cross-fade and the copy.

A cross-fade chunk is an overlap, which both segments generated: the stitcher compares the two versions
frame by frame and blends a short span where they differ least and the audio is quietest (worker/
seam_blend.py; BlendOptions: or linearly across the whole overlap), taking each side's own frames before
and after it. What it measured (and SaveSegmentVideo's own measurements, segment_format.SegmentStats)
becomes StitchResult.seams.

A chunk's decoder seeks into its segment file rather than decoding it from the start (SaveSegmentVideo
writes a key frame every second in its whole form). Memory does not grow with video length: bodies go file to file
inside ffmpeg; only overlap frames pass through Python, as raw yuv420p (a linear blend on the Y, U and
V planes is the same blend as on RGB), one overlap at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from worker.media import segment_format
from worker.request.errors import JobFailed
from worker.media.ffmpeg import DEFAULT_LIMITS, Limits, ProbeError, Watchdog, probe, run, start
from worker.media.loudness import LoudnessEnvelope
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.output.seam_blend import (FLAT_SPREAD, BlendOptions, SeamMeasure, Span, blend_frame, choose_span,
                                      color_difference, luma_change, luma_spread, mean_absolute_difference, plane_means)
from worker.media.segment_format import SegmentStats
from worker.render.segment_video import SegmentVideo

log = logging.getLogger(__name__)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
MIN_CHUNK_FRAMES = 40  # a body is split into at most one piece per encoder, none shorter than this
SQUARE_PIXELS = segment_format.SQUARE_PIXELS.split("=")  # as an ffmpeg-python filter: name, argument


@dataclass(frozen=True)
class OutputFormat:
    """The result's encoding: its size and rate, x264's preset and rate factor, the AAC bitrate."""

    width: int
    height: int
    fps: float
    crf: int
    preset: str
    audio_bitrate_kbps: int


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    busy_seconds: float  # what the stitch work would take alone: chunk encodes over the encoders, plus the join
    frames_copied: int = 0  # frames of segment bodies taken as SaveSegmentVideo encoded them
    seams: tuple[SeamMeasure, ...] = ()  # one per overlap, in order
    # The median frame-to-frame change inside the segments' bodies (SaveSegmentVideo's measurements; None
    # where no segment brought them): what a seam's change is compared with.
    change_median: float | None = None
    color_matched: bool = False  # every segment was matched to the colour reference by SaveSegmentVideo
    # Frames of the result whose picture is one colour (black, blank: a Y spread under FLAT_SPREAD): the bodies' by
    # SaveSegmentVideo's measurements, the overlaps' as the stitch wrote them; None where a segment came without.
    flat_frames: int | None = None


@dataclass(frozen=True)
class StreamInfo:
    """What ffprobe says of a file's video stream; `headers` is a hash of its H.264 parameter sets."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    rate: str
    packets: int
    headers: str


@dataclass(frozen=True)
class Chunk:
    """Output frames [start, end): from one segment (one source) or a cross-fade of two (two sources)."""

    start: int
    end: int
    sources: tuple[int, ...]  # segment indices

    @property
    def frames(self) -> int:
        return self.end - self.start


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

    Owns `folder` (chunk files, the AAC audio) and removes it in close(), or when its with-block ends.
    """

    def __init__(self, plan: SegmentPlan, folder: Path, audio: Path, output: OutputFormat,
                 encoders: int | None = None, blend: BlendOptions = BlendOptions(),
                 loudness: LoudnessEnvelope | None = None, limits: Limits = DEFAULT_LIMITS):
        self.plan, self.folder, self.output, self.limits = plan, folder, output, limits
        self.blend, self.loudness = blend, loudness
        self.cores = os.cpu_count() or 1
        self.encoders = encoders or max(2, self.cores // 4)
        self.threads = max(1, self.cores // self.encoders)  # x264 threads per chunk encode, at least
        self.chunks = plan_chunks(plan, self.encoders)
        self.segments: dict[int, SegmentVideo] = {}
        self.encodes: dict[Chunk, Future] = {}
        self.adopted: dict[Chunk, Path] = {}  # body chunks taken as SaveSegmentVideo encoded them
        self.stats: dict[int, SegmentStats] = {}  # SaveSegmentVideo's measurements, by segment
        self.seams: dict[int, SeamMeasure] = {}
        self.encode_seconds = 0.0
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self.executor = ThreadPoolExecutor(self.encoders, thread_name_prefix="stitch")
        self.audio = self.executor.submit(self._encode_audio, audio)  # needs no segment: done early

    def __enter__(self) -> "Stitcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_segment(self, index: int, video: SegmentVideo) -> None:
        """Segment `index` has arrived (one file, or the split form): start every chunk that now has what it needs."""
        joinable = self._joinable_body(self.plan.segments[index], video)  # an ffprobe; outside the lock
        stats = _read_stats(video, self.plan.segments[index])
        with self.lock:
            self.segments[index] = video
            if stats is not None:
                self.stats[index] = stats
            pieces = [n for n, chunk in enumerate(self.chunks) if chunk.sources == (index,)]
            if joinable and pieces:  # the encoded body is one chunk, copied
                first, last = self.chunks[pieces[0]], self.chunks[pieces[-1]]
                body = Chunk(first.start, last.end, (index,))
                self.chunks[pieces[0]:pieces[-1] + 1] = [body]
                self.adopted[body] = video.body
            ready = [chunk for chunk in self.chunks
                     if chunk not in self.encodes and all(i in self.segments for i in chunk.sources)]
            # This arrival's encodes share the cores: a lone cross-fade (the bodies copied) gets them all.
            encoding = sum(1 for chunk in ready if chunk not in self.adopted) or 1
            threads = max(self.threads, self.cores // encoding)
            for chunk in ready:
                self.encodes[chunk] = self.executor.submit(self._encode, chunk, threads)

    def finish(self, dest: Path) -> StitchResult:
        """Waits for every chunk, joins them by stream copy with the AAC audio into dest (faststart)."""
        try:
            missing = sorted(s.index for s in self.plan.segments if s.index not in self.segments)
            if missing:
                raise JobFailed(f"stitch: segment(s) {missing} never arrived")
            files = [self.encodes[chunk].result() for chunk in self.chunks]
            joined = time.monotonic()
            listing = self.folder / "chunks.txt"
            listing.write_text("".join(f"file {_quoted(f.resolve())}\n" for f in files))
            video = ffmpeg.input(str(listing), format="concat", safe=0).video
            sound = ffmpeg.input(str(self.audio.result())).audio
            run(ffmpeg.output(video, sound, str(dest), c="copy", movflags="+faststart"), "join the chunks", nice=True,
                limits=self.limits)
            join_s = time.monotonic() - joined
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            self.close()
        busy = self.encode_seconds / self.encoders + join_s
        copied = sum(chunk.frames for chunk in self.adopted)
        log.info("stitched %d frames from %d chunks: %d frames copied from encoded segment bodies, %.2f s of "
                 "encoding (up to %d encodes at once), join %.2f s", self.plan.total_frames, len(self.chunks),
                 copied, self.encode_seconds, self.encoders, join_s)
        stats = [self.stats.get(s.index) for s in self.plan.segments]
        return StitchResult(dest, self.plan.total_frames, busy, frames_copied=copied,
                            seams=tuple(self.seams[k] for k in sorted(self.seams)), change_median=self._change_median(),
                            color_matched=all(s is not None and s.color_matched for s in stats),
                            flat_frames=self._flat_frames())

    def close(self) -> None:
        """Stops (cancelling chunks not yet started) and removes the folder; safe to call twice."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the work ----------------------------------------------------------------------------------

    def _encode_audio(self, audio: Path) -> Path:
        dest = self.folder / "audio.m4a"
        run(ffmpeg.input(str(audio)).audio.output(str(dest), acodec="aac",
                                                  audio_bitrate=f"{self.output.audio_bitrate_kbps}k"),
            "encode the audio", nice=True, limits=self.limits, frames=self.plan.total_frames)
        return dest

    def _joinable_body(self, segment: Segment, video: SegmentVideo) -> bool:
        """Whether the split form's encoded body is the stream the stitch would write for those frames."""
        if not video.split or video.body is None:
            return False
        frames = segment.frames - self.plan.overlap_with_previous(segment) - self.plan.overlap_with_next(segment)
        info = _probe(video.body, self.limits, count=False)
        out = self.output
        wanted = ("h264", out.width, out.height, "yuv420p", segment_format.rate_text(out.fps), frames,
                  _reference_headers(out.width, out.height, out.fps, out.preset, out.crf))
        found = (info.codec, info.width, info.height, info.pix_fmt, info.rate, info.packets, info.headers)
        if found != wanted:
            log.warning("segment %d: its encoded body is %s, the output needs %s; encoding it again",
                        segment.index, found, wanted)
        return found == wanted

    def _encode(self, chunk: Chunk, threads: int) -> Path:
        if chunk in self.adopted:
            return self.adopted[chunk]
        started = time.monotonic()
        if len(chunk.sources) == 2:
            dest = self.folder / f"chunk_{chunk.start:07d}.mp4"
            self._encode_crossfade(chunk, dest, threads)
            self._check(chunk, dest)
        else:
            dest = self._encode_frames(chunk, threads)
        with self.lock:
            self.encode_seconds += time.monotonic() - started
        return dest

    def _encode_frames(self, chunk: Chunk, threads: int) -> Path:
        """A body chunk: frames of one segment, decoded and encoded."""
        dest = self.folder / f"chunk_{chunk.start:07d}.mp4"
        segment = self.plan.segments[chunk.sources[0]]
        frames = self._frames_of(segment, chunk.start - segment.start, chunk.frames)
        run(frames.output(str(dest), **self._codec(threads)), f"encode frames {chunk.start}-{chunk.end}", nice=True,
            limits=self.limits, frames=chunk.frames)
        self._check(chunk, dest)
        return dest

    def _check(self, chunk: Chunk, dest: Path) -> None:
        """The encoded chunk has its frames (else a segment had too few)."""
        info = _probe(dest, self.limits)
        if info.packets != chunk.frames:
            segment = self.plan.segments[chunk.sources[-1]]
            path, _ = self._locate(segment, chunk.start - segment.start)
            raise JobFailed(f"segment video {path.name} has {_probe(path, self.limits).packets} frames, "
                            f"expected {self._frames_in(segment, path)}")

    def _encode_crossfade(self, chunk: Chunk, dest: Path, threads: int) -> None:
        """The overlap's frames: the previous segment's, a blend, then the following segment's (seam_blend).

        The previous segment's frames are held in memory; the following segment's are read twice, once
        to compare the two versions (where to blend) and once to blend, so that one overlap is held at most."""
        before, after = (self.plan.segments[i] for i in chunk.sources)
        out = self.output
        tail = list(self._raw_frames(before, chunk.start - before.start, chunk.frames))
        disagreement, tail_means, head_means = [], [], []
        for first, second in zip(tail, self._raw_frames(after, 0, chunk.frames), strict=True):
            disagreement.append(mean_absolute_difference(first, second))
            tail_means.append(plane_means(first, out.width, out.height))
            head_means.append(plane_means(second, out.width, out.height))
        levels = self.loudness.levels_db[chunk.start:chunk.end] if self.loudness is not None else None
        span = (choose_span(np.array(disagreement), levels, self.blend.span_frames(chunk.frames)) if self.blend.focused
                else Span(0, chunk.frames))
        changes, flat = [], 0
        encoder = start(_raw_input(out.width, out.height, out.fps).output(str(dest), **self._codec(threads)),
                        nice=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        what = f"encode the cross-fade {chunk.start}-{chunk.end}"
        with Watchdog(encoder, what, self.limits, chunk.frames) as watchdog:
            try:
                previous = None
                head = self._raw_frames(after, 0, chunk.frames)
                for position, (first, second) in enumerate(zip(tail, head, strict=True)):
                    frame = blend_frame(first, second, position, span)
                    flat += luma_spread(frame, out.width, out.height) < FLAT_SPREAD
                    if previous is not None:
                        changes.append(luma_change(previous, frame, out.width, out.height))
                    encoder.stdin.write(frame.tobytes())
                    previous = frame
                encoder.stdin.close()
            except BaseException:
                encoder.kill()
                encoder.wait()
                watchdog.check()  # a write that failed because the watchdog stopped the encoder: say why
                raise
            error = encoder.stderr.read().decode(errors="replace")
            encoder.wait()
        watchdog.check()
        if encoder.returncode != 0:
            raise JobFailed(f"ffmpeg could not encode the cross-fade {chunk.start}-{chunk.end}: {error.strip()[-500:]}")
        unmatched = self._unmatched_means(before.index, after.index)
        measure = SeamMeasure(
            index=before.index, overlap_start=chunk.start, overlap_end=chunk.end,
            blend_start=chunk.start + span.start, blend_end=chunk.start + span.end,
            audio_db=(round(self.loudness.level_db(chunk.start + span.start, chunk.start + span.end)
                            - self.loudness.median_db, 1) if self.loudness is not None else None),
            disagreement_overlap=round(float(np.mean(disagreement)), 2),
            disagreement_blend=round(float(np.mean(disagreement[span.start:span.end])), 2),
            color_before=round(color_difference(*unmatched) if unmatched else color_difference(tail_means, head_means), 2),
            color_after=round(color_difference(tail_means, head_means), 2),
            change_at_seam=round(max(changes), 2) if changes else None, flat_frames=flat)
        with self.lock:
            self.seams[before.index] = measure

    def _unmatched_means(self, before: int, after: int) -> tuple[list, list] | None:
        """The overlap's plane means on both sides before colour matching, where SaveSegmentVideo matched them."""
        first, second = self.stats.get(before), self.stats.get(after)
        if first is None or second is None or not first.unmatched_means or not second.unmatched_means:
            return None
        overlap = self.plan.overlap_with_next(self.plan.segments[before])
        return first.unmatched_means[-overlap:], second.unmatched_means[:overlap]

    def _change_median(self) -> float | None:
        """The median frame-to-frame change between the frames of the segments' bodies (overlaps left out:
        the blends replace them)."""
        changes = []
        for segment in self.plan.segments:
            stats = self.stats.get(segment.index)
            if stats is None:
                continue
            first, last = self.plan.body(segment)
            changes += stats.changes[first:max(first, last - 1)]  # changes[i]: frame i to i + 1, both in the body
        return round(float(np.median(changes)), 2) if changes else None

    def _flat_frames(self) -> int | None:
        """How many frames of the result are one colour: each body's (overlaps left out) by its save node's
        measurements, each overlap's as the cross-fade wrote it; None where a segment's measurements lack them."""
        flat = sum(seam.flat_frames for seam in self.seams.values())
        for segment in self.plan.segments:
            stats = self.stats.get(segment.index)
            if stats is None or not stats.spreads:
                return None
            first, last = self.plan.body(segment)
            flat += sum(1 for spread in stats.spreads[first:last] if spread < FLAT_SPREAD)
        return flat

    def _locate(self, segment: Segment, frame: int) -> tuple[Path, int]:
        """The file holding the segment's frame `frame`, and the frame's index in that file."""
        return self.segments[segment.index].locate(frame, segment.frames, self.plan.overlap_with_previous(segment),
                                                   self.plan.overlap_with_next(segment))

    def _frames_of(self, segment: Segment, first: int, count: int):
        """Frames [first, first + count) of a segment on the fps grid, scaled to the output size (the
        range lies in one of its files: chunks never cross a head, body or tail).

        Like inputs.cut_video: -copyts keeps the source's timestamps, so the fps filter numbers
        frames from the start of the file whatever the seek, and trim picks them by number. The seek,
        half a frame early, only saves decoding: ffmpeg decodes from the key frame before it.
        """
        path, first = self._locate(segment, first)
        seek = max(0.0, (first - 0.5) / self.output.fps)
        # The split form is in the job's matrix (its raw overlaps carry no tag to say so); a file another save
        # node wrote says its own (untagged: BT.601 assumed), and is converted.
        matrix = segment_format.MATRIX if self.segments[segment.index].split else "auto"
        return (ffmpeg.input(str(path), ss=seek, copyts=None).video
                .filter("fps", fps=segment_format.rate_text(self.output.fps))
                .filter("trim", start_pts=first, end_pts=first + count)
                .filter("setpts", "PTS-STARTPTS")
                .filter("scale", self.output.width, self.output.height, in_color_matrix=matrix,
                        out_color_matrix=segment_format.MATRIX, out_range="tv")
                .filter(*SQUARE_PIXELS))

    def _raw_frames(self, segment: Segment, first: int, count: int) -> Iterator[np.ndarray]:
        """Frames [first, first + count) of a segment as flat yuv420p arrays; raises if there are fewer."""
        frame_bytes = self.output.width * self.output.height * 3 // 2
        decoder = start(self._frames_of(segment, first, count).output("pipe:", format="rawvideo", pix_fmt="yuv420p",
                                                                      vframes=count),
                        nice=True, stdout=subprocess.PIPE)
        _widen_pipe(decoder.stdout)
        produced = 0
        with Watchdog(decoder, f"decode frames of segment {segment.index}", self.limits, count) as watchdog:
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
        watchdog.check()
        if produced < count:
            path, first_in_file = self._locate(segment, first)
            raise JobFailed(f"segment video {path.name} has {first_in_file + produced} frames, "
                            f"expected {self._frames_in(segment, path)}")

    def _frames_in(self, segment: Segment, path: Path) -> int:
        """How many frames the plan needs in this file of the segment."""
        video = self.segments[segment.index]
        before, after = self.plan.overlap_with_previous(segment), self.plan.overlap_with_next(segment)
        if not video.split:
            return segment.frames
        return {video.head: before, video.tail: after}.get(path, segment.frames - before - after)

    def _codec(self, threads: int) -> dict:
        return _x264(self.output.preset, self.output.crf, self.output.fps, threads)


# -- ffmpeg plumbing -------------------------------------------------------------------------------

def _x264(preset: str, crf: int, fps: float, threads: int) -> dict:
    """Output options of every chunk (segment_format.x264_options: the same as SaveSegmentVideo's split-form
    bodies), so that their streams join by a plain copy; every input declares square pixels (setsar)."""
    return {**segment_format.x264_options(preset, crf, fps), "threads": threads, "an": None}


def _raw_input(width: int, height: int, fps: float):
    """Raw yuv420p frames from stdin, as the cross-fades (and SaveSegmentVideo) feed x264."""
    return ffmpeg.input("pipe:", **segment_format.raw_input_options(width, height, fps)).filter(*SQUARE_PIXELS)


@lru_cache(maxsize=None)
def _reference_headers(width: int, height: int, fps: float, preset: str, crf: int) -> str:
    """The H.264 headers (hash) of one black frame encoded as every chunk is; a body joins only with these.
    They depend on the settings alone, so each set is encoded once per worker process."""
    black = bytes([16]) * (width * height) + bytes([128]) * (width * height // 2)
    with tempfile.TemporaryDirectory(prefix="stitch-reference-") as folder:
        dest = Path(folder) / "reference.mp4"
        run(_raw_input(width, height, fps).output(str(dest), **_x264(preset, crf, fps, 1)),
            "encode a reference frame", input=black)
        return _probe(dest).headers


def _probe(path: Path, limits: Limits = DEFAULT_LIMITS, count: bool = True) -> StreamInfo:
    """The file's video stream; its frames counted by reading every packet (count) or taken from the
    container's index (an mp4's sample table: instant)."""
    options = ("-select_streams", "v:0", "-show_data_hash", "MD5", "-show_streams", *(("-count_packets",) if count else ()))
    try:
        s = (probe(path, limits, *options).get("streams") or [{}])[0]
    except ProbeError:
        s = {}
    frames = s.get("nb_read_packets" if count else "nb_frames") or 0
    return StreamInfo(s.get("codec_name", ""), int(s.get("width", 0)), int(s.get("height", 0)), s.get("pix_fmt", ""),
                      s.get("r_frame_rate", ""), int(frames), s.get("extradata_hash", ""))


def _read_stats(video: SegmentVideo, segment: Segment) -> SegmentStats | None:
    """A segment's measurements, if its save node wrote them for the segment's frames (they only feed the
    report: a file that cannot be read is left out)."""
    if video.stats is None:
        return None
    try:
        stats = SegmentStats.read(video.stats)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("segment %d: measurements unreadable (%s); the seam report goes without them", segment.index, exc)
        return None
    if stats.frames != segment.frames or len(stats.changes) != max(0, segment.frames - 1) or \
            len(stats.unmatched_means or [None] * segment.frames) != segment.frames or \
            len(stats.spreads or [None] * segment.frames) != segment.frames or \
            not all(isinstance(x, (int, float)) for x in stats.changes + (stats.spreads or [])):
        log.warning("segment %d: measurements of %d frames, not %d; left out", segment.index, stats.frames,
                    segment.frames)
        return None
    return stats


def _quoted(path: Path) -> str:
    """A path as the concat demuxer's listing reads it: in single quotes, each ' written as '\\''."""
    return "'" + str(path).replace("'", "'\\''") + "'"


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: a 720p frame then crosses in one piece, not in 20 wake-ups."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # the limit in /proc/sys/fs/pipe-max-size is lower; the default pipe still works
