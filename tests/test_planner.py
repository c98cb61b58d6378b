"""The planner's edge cases: every plan covers [0, N) exactly, with balanced overlapping segments."""

from __future__ import annotations

import pytest

from worker.templates.frame_grid import FrameGrid
from worker.planning.segment_plan import plan_segments, segment_count, total_frames_for


def check_plan(plan, total, overlap):
    segments = plan.segments
    assert segments[0].start == 0 and segments[-1].end == total
    for before, after in zip(segments, segments[1:]):
        assert before.end - after.start == overlap == plan.overlap
        assert after.start > before.start
    lengths = [s.frames for s in segments]
    assert max(lengths) - min(lengths) <= 1, lengths
    if len(segments) > 1:
        assert min(lengths) >= 2 * overlap  # one segment's two overlaps never meet


def test_one_frame_is_one_segment():
    plan = plan_segments(1, parallelism=8, overlap=40)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 1)] and plan.overlap == 0


def test_fewer_frames_than_the_overlap_is_one_segment():
    plan = plan_segments(30, parallelism=4, overlap=40)
    assert len(plan.segments) == 1 and plan.segments[0].frames == 30


def test_two_segments_as_in_the_readme():
    plan = plan_segments(1000, parallelism=2, overlap=40)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 520), (480, 1000)]
    check_plan(plan, 1000, 40)


def test_many_instances_on_a_short_video_use_only_as_many_as_fit():
    plan = plan_segments(200, parallelism=64, overlap=40)
    assert len(plan.segments) == 4  # (200 - 40) // (80 - 40): each segment needs 2 x 40 frames
    check_plan(plan, 200, 40)


def test_zero_overlap_splits_evenly():
    plan = plan_segments(10, parallelism=3, overlap=0)
    assert sorted(s.frames for s in plan.segments) == [3, 3, 4]
    check_plan(plan, 10, 0)


def test_min_segment_frames_limits_the_split():
    assert segment_count(100, parallelism=8, overlap=0, min_segment_frames=30) == 3


def test_max_segment_frames_forces_more_segments_than_instances():
    plan = plan_segments(10_000, parallelism=2, overlap=8, max_segment_frames=4096)
    assert len(plan.segments) == 3 and max(s.frames for s in plan.segments) <= 4096
    check_plan(plan, 10_000, 8)


@pytest.mark.parametrize("total", [2, 17, 81, 99, 100, 101, 1500, 4321])
@pytest.mark.parametrize("parallelism", [1, 2, 3, 8])
@pytest.mark.parametrize("overlap", [0, 1, 8, 40])
def test_every_plan_covers_the_video_exactly(total, parallelism, overlap):
    plan = plan_segments(total, parallelism, overlap)
    assert len(plan.segments) <= parallelism
    if len(plan.segments) > 1:
        check_plan(plan, total, overlap)
    else:
        assert plan.segments[0].frames == total


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        plan_segments(0, 2, 8)
    with pytest.raises(ValueError):
        plan_segments(10, 0, 8)
    with pytest.raises(ValueError):
        plan_segments(10, 2, -1)


@pytest.mark.parametrize("seconds, fps, frames", [(4.0, 25, 100), (2.345, 24, 57), (0.01, 25, 1), (60, 25, 1500),
                                                  (1 / 3, 30, 10)])
def test_frames_follow_the_audio_rounded_up(seconds, fps, frames):
    assert total_frames_for(seconds, fps) == frames


def test_infinitetalk_grid_puts_every_segment_but_the_last_on_a_window_boundary():
    grid = FrameGrid(quantum=72, offset=9, minimum=81)
    plan = plan_segments(1500, parallelism=2, overlap=40, min_segment_frames=81, max_segment_frames=1017, grid=grid)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 801), (761, 1500)]
    assert [grid.round_up(s.frames) for s in plan.segments] == [801, 801]  # 62 frames wasted, all in the last


@pytest.mark.parametrize("total", [81, 200, 1500, 3000, 15000])
@pytest.mark.parametrize("parallelism", [1, 2, 4, 8])
def test_grid_plans_cover_the_video_and_respect_the_limits(total, parallelism):
    grid = FrameGrid(quantum=72, offset=9, minimum=81)
    plan = plan_segments(total, parallelism, 40, min_segment_frames=81, max_segment_frames=1017, grid=grid)
    segments = plan.segments
    assert segments[0].start == 0 and segments[-1].end == total
    for before, after in zip(segments, segments[1:]):
        assert before.end - after.start == 40
    for segment in segments[:-1]:
        assert grid.round_up(segment.frames) == segment.frames <= 1017
    assert grid.round_up(segments[-1].frames) <= 1017


@pytest.mark.parametrize("frames, rounded", [(1, 1), (4, 5), (5, 5), (6, 9), (100, 101)])
def test_wan_vae_grid_rounds_up_to_4k_plus_1(frames, rounded):
    assert FrameGrid(quantum=4, offset=1).round_up(frames) == rounded


def test_stitch_lead_makes_earlier_segments_shorter_by_its_ratio():
    plan = plan_segments(1500, parallelism=2, overlap=40, stitch_lead=0.05)
    first, second = plan.segments
    assert (first.start, second.end, first.end - second.start) == (0, 1500, 40)
    assert abs(first.frames / second.frames - 1 / 1.05) < 0.002
    eight = plan_segments(4000, parallelism=8, overlap=40, stitch_lead=0.05)
    lengths = [s.frames for s in eight.segments]
    assert lengths == sorted(lengths) and eight.segments[-1].end == 4000
    check_plan_covers(eight, 4000, 40)


def test_stitch_lead_on_a_grid_keeps_all_but_the_last_on_the_grid():
    grid = FrameGrid(quantum=4, offset=1)
    plan = plan_segments(1500, parallelism=2, overlap=40, grid=grid, stitch_lead=0.05)
    assert grid.round_up(plan.segments[0].frames) == plan.segments[0].frames
    assert plan.segments[0].frames < plan.segments[1].frames


def check_plan_covers(plan, total, overlap):
    assert plan.segments[0].start == 0 and plan.segments[-1].end == total
    for before, after in zip(plan.segments, plan.segments[1:]):
        assert before.end - after.start == overlap


@pytest.mark.parametrize("frames", [121, 122, 123, 150, 200, 500])
def test_a_grid_with_tight_segment_limits_ends_and_keeps_the_limit(frames):
    """InfiniteTalk's 72k + 9 grid with max_segment_frames 81: rounding made 2 segments too long and 3 leave
    the last too short; the plan takes the longer count (its last segment needs only to pass its overlap)."""
    grid = FrameGrid(72, 9, 81)
    plan = plan_segments(frames, 1, 40, 81, 81, grid)
    assert max(s.frames for s in plan.segments) <= 81
    assert plan.segments[0].start == 0 and plan.segments[-1].end == frames
    assert all(a.end - b.start == 40 for a, b in zip(plan.segments, plan.segments[1:]))
    assert plan.segments[-1].frames > 40


def test_an_impossible_split_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="cannot be cut into segments of at most 80 frames"):
        plan_segments(300, 2, 40, 81, 80, FrameGrid(72, 9, 81))
