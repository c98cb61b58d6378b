"""Where and how a seam is blended, and what it looks like: pure functions on yuv420p frames (flat uint8
arrays, as the stitcher reads them) and the job's loudness envelope.

Both segments of a seam generate its whole overlap, so the stitcher holds two versions of those frames.
A linear fade across the whole overlap shows two different head poses at once for its whole length; a
short blend placed where the two versions differ least (and the audio is quietest, so mouths are still)
shows almost nothing. choose_span picks that place; blend_frame makes each output frame of the overlap.
The measurements (disagreement, plane means, frame-to-frame change) are in 8-bit units, the values of
the Y, U and V samples as the stitcher encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Differences below these do not decide where a blend goes: one 8-bit step is not visible, and 10 dB is
# about what makes a sound twice as loud.
DISAGREEMENT_SCALE = 1.0
LOUDNESS_SCALE_DB = 10.0


@dataclass(frozen=True)
class BlendOptions:
    """focused: a short blend of `frames` frames where the two versions agree; else linear across the overlap."""

    focused: bool = True
    frames: int = 10

    def span_frames(self, overlap: int) -> int:
        return min(self.frames, overlap) if self.focused else overlap


@dataclass(frozen=True)
class SeamMeasure:
    """One seam as the stitcher made it (frames are output frames; differences in 8-bit units)."""

    index: int  # the seam between segments index and index + 1
    overlap_start: int
    overlap_end: int  # exclusive
    blend_start: int
    blend_end: int  # exclusive
    audio_db: float | None  # the audio's level over the blend against the job's median (None: no envelope)
    disagreement_overlap: float  # the two versions' mean absolute difference over the overlap
    disagreement_blend: float  # ... over the blended frames
    color_before: float  # the sides' colour difference (color_difference) before matching
    color_after: float  # ... as they were blended
    change_at_seam: float | None  # the largest frame-to-frame change in the overlap's output (luma_change)
    flat_frames: int = 0  # frames of the overlap's output that are one colour (luma_spread under FLAT_SPREAD)


@dataclass(frozen=True)
class Span:
    """The frames of an overlap that are blended: overlap positions [start, start + frames)."""

    start: int
    frames: int

    @property
    def end(self) -> int:
        return self.start + self.frames


def mean_absolute_difference(a: np.ndarray, b: np.ndarray) -> float:
    """How much two frames differ: the mean absolute difference of their samples (Y, U and V)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def plane_means(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """A yuv420p frame's mean Y, U and V."""
    luma = width * height
    chroma = luma // 4
    return np.array([frame[:luma].mean(), frame[luma:luma + chroma].mean(), frame[luma + chroma:].mean()])


def luma_change(a: np.ndarray, b: np.ndarray, width: int, height: int) -> float:
    """Frame-to-frame change: the mean absolute difference of two frames' Y planes."""
    luma = width * height
    return mean_absolute_difference(a[:luma], b[:luma])


FLAT_SPREAD = 2.0  # 8-bit units of Y: a frame with less spread than this is one colour (black, blank)


def luma_spread(frame: np.ndarray, width: int, height: int) -> float:
    """The standard deviation of a frame's Y plane (SaveSegmentVideo measures the same of every frame it saves)."""
    return float(frame[:width * height].std())


def color_difference(means_a: np.ndarray, means_b: np.ndarray) -> float:
    """How far apart two sides' colours are: the largest difference of their mean Y, U or V over the
    overlap (means_*: one row of plane means per frame)."""
    return float(np.abs(np.asarray(means_a).mean(axis=0) - np.asarray(means_b).mean(axis=0)).max())


def choose_span(disagreement: np.ndarray, levels_db: np.ndarray | None, frames: int) -> Span:
    """Where in the overlap to blend `frames` frames: the run of frames where the two versions differ least
    and the audio is quietest (each measure scaled to its range over the overlap's possible runs, at least
    DISAGREEMENT_SCALE or LOUDNESS_SCALE_DB, so that differences too small to see or hear do not decide);
    nearest the overlap's centre among equals.

    disagreement: per overlap frame; levels_db: per overlap frame (None: no audio to go by). When the
    overlap has room, the run keeps a frame of each side before and after it, so that the whole
    transition lies inside the overlap."""
    overlap = len(disagreement)
    frames = max(1, min(frames, overlap))
    margin = 1 if overlap >= frames + 2 else 0
    starts = np.arange(margin, overlap - frames - margin + 1)
    score = _scaled(_run_means(np.asarray(disagreement, dtype=np.float64), frames)[starts], DISAGREEMENT_SCALE)
    if levels_db is not None:
        power = np.power(10.0, np.asarray(levels_db, dtype=np.float64) / 10.0)
        levels = 10.0 * np.log10(np.maximum(_run_means(power, frames), 1e-30))
        score = score + _scaled(levels[starts], LOUDNESS_SCALE_DB)
    off_centre = np.abs(starts + frames / 2 - overlap / 2)
    best = min(range(len(starts)), key=lambda i: (round(score[i], 9), off_centre[i]))
    return Span(int(starts[best]), frames)


def blend_frame(previous: np.ndarray, following: np.ndarray, position: int, span: Span) -> np.ndarray:
    """Output frame `position` of the overlap: the previous segment's before the span, the following
    segment's after it, a linear fade between them inside it."""
    if position < span.start:
        return previous
    if position >= span.end:
        return following
    weight = (position - span.start + 1) * 256 // (span.frames + 1)  # following's share in 1/256ths, never 0 or 256
    mixed = previous.astype(np.uint16) * (256 - weight) + following.astype(np.uint16) * weight + 128
    return (mixed >> 8).astype(np.uint8)


def _run_means(values: np.ndarray, width: int) -> np.ndarray:
    """Element i: the mean of values[i:i + width]."""
    total = np.concatenate(([0.0], np.cumsum(values)))
    return (total[width:] - total[:-width]) / width


def _scaled(values: np.ndarray, least_range: float) -> np.ndarray:
    return (values - values.min()) / max(float(values.max() - values.min()), least_range)
