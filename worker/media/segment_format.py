"""How a segment's workflow hands its frames to the stitcher: the files SaveSegmentVideo writes.

The one contract between the worker's ComfyUI node (comfy_nodes/, which runs inside ComfyUI's process
and loads this file by its path), the reader of a segment's files (worker/render/segment_video.py), the
stitcher (worker/output/stitch.py) and the tests (media_samples/factory.py). Standard library only.

Whole form: one H.264 mp4 with every frame of the segment (what any save node writes).
Split form: the frames shared with the previous segment (head) and with the next (tail) as raw yuv420p
in y4m files, for the stitcher's cross-fades; the frames only this segment has (body) encoded with the
output's own x264 settings, so that the stitcher copies them into the result instead of encoding again.
With either form, a small JSON file of what the node measured of the frames (SegmentStats: frame-to-frame
change, colours before matching) for the seam report.
Copying works only if the body's H.264 stream is the one the stitcher would write itself: same size,
frame rate, pixel format, colour tags, x264 options and therefore the same stream headers. x264_options()
and SQUARE_PIXELS are that agreement.

Colour: every frame of a job is BT.709 limited range, at every size (one matrix everywhere, the one HD
players assume): the cut clips the workflows load (worker/media/inputs.py), the node's RGB to yuv420p conversion
(comfy_nodes/: MATRIX's coefficients) and every encode, which declares it in the stream (COLOUR_TAGS), so
that decoders convert back with the matrix that was used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

# The split form's parts, in frame order, and the endings of their file names.
PART_ENDINGS = {"head": "_head.y4m", "body": "_body.mp4", "tail": "_tail.y4m"}
# The whole form's one file.
WHOLE_ENDING = "_.mp4"
# Beside either form, named after it (stats_name): what the node measured of the frames it saved
# (SegmentStats), for the seam report. Not listed among the node's outputs.
STATS_ENDING = "_stats.json"
# Declared on every encode, so that every piece of the result carries the same aspect ratio in its headers.
SQUARE_PIXELS = "setsar=1"
# The one colour matrix of every frame of a job, as ffmpeg's scale filter names it, and the tags that declare
# it (with BT.709 primaries and transfer, limited range) on every encode.
MATRIX = "bt709"
LUMA_WEIGHTS = (0.2126, 0.0722)  # MATRIX's Kr and Kb (Y = Kr R + (1 - Kr - Kb) G + Kb B), for RGB converted by hand
COLOUR_TAGS = {"colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv"}


def split_part(filename: str) -> str | None:
    """"head", "body" or "tail" for a file of the split form, else None."""
    return next((part for part, ending in PART_ENDINGS.items() if filename.endswith(ending)), None)


def stats_name(video_filename: str) -> str | None:
    """The measurements file SaveSegmentVideo wrote beside the file `video_filename` (any part of either
    form); None for a file it did not write."""
    endings = [*PART_ENDINGS.values(), WHOLE_ENDING]
    ending = next((e for e in endings if video_filename.endswith(e)), None)
    return None if ending is None else video_filename[:-len(ending)] + STATS_ENDING


@dataclass(frozen=True)
class SegmentStats:
    """What SaveSegmentVideo measured of a segment's frames, in 8-bit units of the yuv420p it writes.

    changes[i]: the mean absolute difference of frames i and i + 1's Y planes (frame-to-frame change).
    spreads[i]: the standard deviation of frame i's Y plane: a flat frame (black, or one colour) has almost none.
    With color_matched, the frames were matched to the job's colour reference before they were saved;
    unmatched_means[i] then holds frame i's mean Y, U and V before matching (the colour difference at a
    seam without matching).
    """

    frames: int
    changes: list[float]
    color_matched: bool = False
    unmatched_means: list[list[float]] | None = None
    spreads: list[float] | None = None  # None from a node older than this field

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: str | Path) -> SegmentStats:
        """The measurements in `path`; fields a newer node added are left out (a worker reads an older or newer
        worker's segment jobs' files while an endpoint updates)."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


def frame_rate(fps: float) -> Fraction:
    """fps as the exact fraction every file of a job is written with (25 -> 25/1, 23.976 -> 2997/125)."""
    return Fraction(fps).limit_denominator(1001)


def rate_text(fps: float) -> str:
    """frame_rate(fps) as ffmpeg reads a rate: "2997/125"."""
    rate = frame_rate(fps)
    return f"{rate.numerator}/{rate.denominator}"


def y4m_header(width: int, height: int, fps: float) -> bytes:
    """The first line of a split-form overlap file (yuv420p, chroma sited at the centre of each 2x2 block)."""
    rate = frame_rate(fps)
    return f"YUV4MPEG2 W{width} H{height} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode()


def raw_input_options(width: int, height: int, fps: float) -> dict[str, str]:
    """ffmpeg input options (name without the dash -> value) of raw yuv420p frames piped in."""
    return {"f": "rawvideo", "pix_fmt": "yuv420p", "s": f"{width}x{height}", "framerate": rate_text(fps)}


def x264_options(preset: str, crf: int, fps: float, stitchable: bool = True) -> dict[str, str]:
    """ffmpeg output options of every piece of the result: a split-form body and the stitcher's chunks.

    stitchable: x264 writes the same headers whatever the content, so pieces encoded apart join by a
    plain stream copy (with SQUARE_PIXELS on each). The whole form does without it.
    """
    options = {"c:v": "libx264", "preset": preset, "crf": str(crf), "pix_fmt": "yuv420p", "r": rate_text(fps),
               **COLOUR_TAGS}
    return {**options, "x264-params": "stitchable=1"} if stitchable else options


def encode_command(path: str, width: int, height: int, fps: float, crf: int, preset: str, stitchable: bool = True,
                   extra: tuple[str, ...] = ()) -> list[str]:
    """The ffmpeg command line that encodes raw yuv420p frames from its stdin into the mp4 `path` with
    x264_options(): how SaveSegmentVideo writes its files. "ffmpeg" from PATH, as the stitcher runs it: the
    same binary writes the same headers."""
    return ["ffmpeg", "-nostdin", "-v", "error", "-y", *_arguments(raw_input_options(width, height, fps)),
            "-i", "pipe:", "-an", *_arguments(x264_options(preset, crf, fps, stitchable)), "-vf", SQUARE_PIXELS,
            *extra, path]


def _arguments(options: dict[str, str]) -> list[str]:
    return [arg for name, value in options.items() for arg in (f"-{name}", value)]
