"""Splits a video of N frames into overlapping segments of balanced length (pure functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.templates.frame_grid import FrameGrid


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # first frame, inclusive
    end: int  # last frame, exclusive

    @property
    def frames(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        return f"frames {self.start}-{self.end} ({self.frames} frames)"


@dataclass(frozen=True)
class SegmentPlan:
    total_frames: int
    overlap: int  # frames shared by neighbouring segments (0 when there is one segment)
    segments: tuple[Segment, ...]

    def overlap_with_previous(self, segment: Segment) -> int:
        if segment.index == 0:
            return 0
        return self.segments[segment.index - 1].end - segment.start

    def overlap_with_next(self, segment: Segment) -> int:
        if segment.index + 1 == len(self.segments):
            return 0
        return segment.end - self.segments[segment.index + 1].start

    def body(self, segment: Segment) -> tuple[int, int]:
        """The segment's own frames, first and last (exclusive), counted from its start: the overlaps left out."""
        return self.overlap_with_previous(segment), segment.frames - self.overlap_with_next(segment)


def segment_count(total_frames: int, parallelism: int, overlap: int,
                  min_segment_frames: int = 1, max_segment_frames: int | None = None) -> int:
    """How many segments: as many as there are instances, if the video is long enough for them.

    Each segment must hold at least max(min_segment_frames, 2 x overlap) frames, so that one
    segment's two overlaps never meet; segments longer than max_segment_frames force more segments
    than instances (the extra ones queue for a free instance).
    """
    if total_frames < 1:
        raise ValueError("a video needs at least one frame")
    shortest = max(min_segment_frames, 2 * overlap, 1)
    if overlap == 0:
        by_length = total_frames // shortest
    else:
        by_length = (total_frames - overlap) // (shortest - overlap) if total_frames > overlap else 1
    count = max(1, min(parallelism, by_length))
    if max_segment_frames is not None and total_frames > max_segment_frames:
        if max_segment_frames <= overlap:
            raise ValueError("max_segment_frames must exceed the overlap")
        needed = math.ceil((total_frames - overlap) / (max_segment_frames - overlap))
        count = max(count, needed)
    return count


def plan_segments(total_frames: int, parallelism: int, overlap: int,
                  min_segment_frames: int = 1, max_segment_frames: int | None = None,
                  grid: FrameGrid | None = None, stitch_lead: float = 0.0) -> SegmentPlan:
    """Overlapping segments covering frames [0, total_frames) exactly.

    Lengths are balanced to within a frame. With a grid (quantum > 1) every segment but the last is
    rounded up to the grid, so only the last segment generates frames that are not used.

    stitch_lead (the stitch's seconds per frame over one instance's generation seconds per frame)
    makes each segment 1 / (1 + stitch_lead) times as long as the next: segment i is then done about
    when the stitcher has finished segment i - 1, and only the last segment's share of the stitch is
    left once generation ends.
    """
    if parallelism < 1:
        raise ValueError("parallelism must be at least 1")
    if overlap < 0:
        raise ValueError("overlap must not be negative")
    if stitch_lead < 0:
        raise ValueError("stitch_lead must not be negative")
    grid = grid or FrameGrid()
    shortest = max(min_segment_frames, 2 * overlap, 1)
    count = segment_count(total_frames, parallelism, overlap, min_segment_frames, max_segment_frames)
    tried: set[int] = set()
    while 1 < count <= total_frames and count not in tried:
        tried.add(count)
        segments = _layout(total_frames, count, overlap, grid, stitch_lead)
        if max_segment_frames is not None and max(s.frames for s in segments) > max_segment_frames:
            count += 1  # rounding up to the grid made a segment too long
        elif min(s.frames for s in segments) < shortest:
            count -= 1  # rounding up left the last segment too short
        else:
            return SegmentPlan(total_frames, overlap, segments)
    if max_segment_frames is not None and total_frames > max_segment_frames and tried:
        # Grid rounding made one count's segments too long and the next one's last segment too short: take
        # the longer count, whose last segment, which has only one overlap, needs only to reach past it.
        segments = _layout(total_frames, max(tried), overlap, grid, stitch_lead)
        if (max(s.frames for s in segments) <= max_segment_frames and segments[-1].frames > overlap
                and all(s.frames >= 2 * overlap for s in segments[1:-1])):  # a middle segment holds two overlaps
            return SegmentPlan(total_frames, overlap, segments)
        raise ValueError(f"{total_frames} frames cannot be cut into segments of at most {max_segment_frames} "
                         f"frames overlapping by {overlap} on the template's grid of {grid.quantum}")
    return SegmentPlan(total_frames, 0, (Segment(0, 0, total_frames),))


def _layout(total_frames: int, count: int, overlap: int, grid: FrameGrid,
            stitch_lead: float) -> tuple[Segment, ...]:
    """count segments with lengths in proportion to (1 + stitch_lead)^i; the last one ends the video."""
    weights = [(1 + stitch_lead) ** (i - count + 1) for i in range(count)]
    span = total_frames + (count - 1) * overlap  # frames generated in all
    segments: list[Segment] = []
    start, ideal_end = 0, 0.0
    for index, weight in enumerate(weights):
        ideal_end += span * weight / sum(weights) - (overlap if index else 0)
        if index == count - 1:
            end = total_frames
        else:
            end = min(total_frames, start + grid.round_up(max(1, round(ideal_end) - start)))
        segments.append(Segment(index, start, end))
        start = end - overlap
        if end == total_frames and index < count - 1:
            segments.append(Segment(index + 1, end, end))  # nothing left: the caller tries fewer segments
            break
    return tuple(segments)


def total_frames_for(duration_s: float, fps: float) -> int:
    """Frames needed to cover duration_s at fps, rounded up (a partial frame still shows)."""
    # Rounding to microseconds first keeps 4.0 s x 25 fps at 100 frames, not 101.
    return max(1, math.ceil(round(duration_s * fps, 6)))
