"""Moves each seam of a balanced segment plan toward the quietest stretch of the audio near it, within a
budget of generation time (pure functions; the loudness envelope is measured once, worker/media/loudness.py).

A seam is where two independent generations of the same frames meet: the overlap the stitcher blends.
Blended in a speech pause, the two mouths that do not quite match are closed and still; blended mid-word,
the mouth jumps. So each seam's overlap slides toward the place where a run of `blend_frames` frames
(the span the stitcher blends) is quietest.

Moving a seam makes one segment longer and another shorter, which costs time: the job ends when its
slowest segment does, and a template that generates frames in steps (InfiniteTalk: 72k + 9) throws away
what a segment off its grid generates past its end. The cost of a plan, in frames of one instance's
generation, is how much later than planned any segment finishes (segments queued behind it included)
plus how many more generated frames are thrown away than in the balanced plan; it must stay within
budget_fraction of the balanced plan's generation time.

Two moves are tried for each seam, left to right, every shift within `radius` frames: the seam alone
(the segments on either side change length), or the seam and every later one together (only the first
segment and the last change length: on a frame grid, the segments between keep their grid lengths).
Among the moves within budget whose quiet stretch is within TOLERANCE_DB of the quietest found, the
smallest shift wins, so a seam stays where it is when no place nearby is clearly quieter.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from worker.planning.segment_plan import Segment, SegmentPlan
from worker.templates.frame_grid import FrameGrid

TOLERANCE_DB = 3.0  # quiet stretches within this of the quietest count as just as quiet


@dataclass(frozen=True)
class SeamSearch:
    """What seam placement needs besides the plan: the audio, the blend, the budget and the limits."""

    loudness_db: np.ndarray  # level of every output frame (worker/media/loudness.py)
    blend_frames: int  # the span the stitcher blends: the quiet stretch to find inside each overlap
    budget_fraction: float  # of the balanced plan's generation time; 0: seams stay balanced
    parallelism: int  # instances the segments run on at once
    grid: FrameGrid = FrameGrid()
    shortest: int = 1  # segment length limits, as the balanced plan had them
    longest: int = 1_000_000
    radius: int = 50  # frames a seam may move either way


@dataclass(frozen=True)
class SeamPlacement:
    plan: SegmentPlan  # the plan with its seams moved
    balanced: SegmentPlan  # the plan as the balanced planner made it
    shifts: tuple[int, ...]  # per seam: how far its overlap moved (frames; negative: earlier)
    cost_frames: float  # the moved plan's cost against the balanced one
    budget_frames: float


def place_seams(balanced: SegmentPlan, search: SeamSearch) -> SeamPlacement:
    """The plan with each seam moved toward quiet audio, within budget (unchanged with no budget, with one
    segment, or with an envelope of another length)."""
    frames = balanced.total_frames
    seams = len(balanced.segments) - 1
    base_starts = [s.start for s in balanced.segments[1:]]
    base_lengths = [s.frames for s in balanced.segments]
    base_finish = _finish_times(base_lengths, search.parallelism, search.grid)
    budget = search.budget_fraction * max(base_finish)
    if seams < 1 or budget <= 0 or len(search.loudness_db) != frames:
        return SeamPlacement(balanced, balanced, (0,) * max(0, seams), 0.0, max(0.0, budget))
    overlap = balanced.overlap
    quiet = _quiet_levels(np.asarray(search.loudness_db, dtype=np.float64), overlap, search.blend_frames)
    base_waste = _waste(base_lengths, search.grid)

    def cost(starts: list[int]) -> float | None:
        """The plan's cost in frames, or None if a segment breaks the length limits."""
        lengths = _lengths(starts, frames, overlap)
        # A balanced plan's last segment may be shorter than `shortest` (it has one overlap): no shorter still.
        if any(n < min(search.shortest, b) for n, b in zip(lengths, base_lengths)) or max(lengths) > search.longest:
            return None
        late = max(f - b for f, b in zip(_finish_times(lengths, search.parallelism, search.grid), base_finish))
        return max(0.0, late) + max(0, _waste(lengths, search.grid) - base_waste)

    starts = list(base_starts)
    spent = 0.0
    for seam in range(seams):
        moves = []  # (quiet level there, |shift|, slide, shift): every place the seam could go
        for shift in range(-search.radius, search.radius + 1):
            region = starts[seam] + shift - _region_offset(overlap)
            if 0 <= region < len(quiet):
                moves += [(quiet[region], abs(shift), slide, shift) for slide in (False, True)
                          if not slide or (shift != 0 and seam < seams - 1)]  # else the same as moving it alone
        costs: dict[tuple[bool, int], float | None] = {}

        def affordable(move) -> bool:
            _, _, slide, shift = move
            if (slide, shift) not in costs:
                costs[slide, shift] = cost(_moved(starts, seam, shift, slide))
            spend = costs[slide, shift]
            return spend is not None and spend <= budget + 1e-9

        # The quietest place within budget, then the nearest place about as quiet: costs are computed for
        # as few moves as that takes.
        quietest = next((m[0] for m in sorted(moves) if affordable(m)), None)
        if quietest is None:
            continue
        chosen = next(m for m in sorted(moves, key=lambda m: m[1:]) if m[0] <= quietest + TOLERANCE_DB and affordable(m))
        starts = _moved(starts, seam, chosen[3], chosen[2])
        spent = costs[chosen[2], chosen[3]]
    plan = SegmentPlan(frames, overlap, _segments(starts, frames, overlap))
    return SeamPlacement(plan, balanced, tuple(s - b for s, b in zip(starts, base_starts)), round(spent, 3),
                         round(budget, 3))


def _moved(starts: list[int], seam: int, shift: int, slide: bool) -> list[int]:
    """The seams' overlap starts with seam `seam` (and with slide, every later one) moved by shift."""
    return [s + shift if k == seam or (slide and k > seam) else s for k, s in enumerate(starts)]


def _region_offset(overlap: int) -> int:
    """Where a seam's region starts before its overlap's start: a hard cut (no overlap) is judged by the
    frame on either side of it."""
    return 1 if overlap == 0 else 0


def _quiet_levels(levels_db: np.ndarray, overlap: int, blend_frames: int) -> np.ndarray:
    """Element i: the level of the quietest run of blend_frames frames inside the seam region that starts
    at frame i (the overlap; for a hard cut, the frame on either side)."""
    region = max(overlap, 2)
    width = max(1, min(blend_frames, region))
    power = np.concatenate(([0.0], np.cumsum(np.power(10.0, levels_db / 10.0))))
    if len(levels_db) < region:
        return np.empty(0)
    runs = 10.0 * np.log10(np.maximum((power[width:] - power[:-width]) / width, 1e-30))
    return sliding_window_view(runs, region - width + 1).min(axis=1)


def _lengths(starts: list[int], frames: int, overlap: int) -> list[int]:
    ends = [s + overlap for s in starts] + [frames]
    return [end - start for start, end in zip([0] + starts, ends)]


def _segments(starts: list[int], frames: int, overlap: int) -> tuple[Segment, ...]:
    ends = [s + overlap for s in starts] + [frames]
    return tuple(Segment(i, start, end) for i, (start, end) in enumerate(zip([0] + starts, ends)))


def _finish_times(lengths: list[int], parallelism: int, grid: FrameGrid) -> list[float]:
    """When each segment is done, in frames of one instance's generation: segments take the first free
    instance in order, as the pool lends them, and cost the frames they generate (grid.round_up)."""
    free = [0.0] * max(1, min(parallelism, len(lengths)))
    finishes = []
    for length in lengths:
        started = heapq.heappop(free)
        finishes.append(started + grid.round_up(length))
        heapq.heappush(free, finishes[-1])
    return finishes


def _waste(lengths: list[int], grid: FrameGrid) -> int:
    """Generated frames that no segment keeps."""
    return sum(grid.round_up(length) - length for length in lengths)
