"""Seam placement (worker/planning/seam_placement.py) on real speech: the loudness envelope measured with ffmpeg from
espeak-ng's voice, pauses found independently by ffmpeg's silencedetect; and the budget's arithmetic."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from media_samples.factory import make_speech, media_duration, silences
from worker.media.loudness import SILENCE_DB, loudness_envelope
from worker.templates.frame_grid import FrameGrid
from worker.planning.segment_plan import plan_segments, total_frames_for
from worker.planning.seam_placement import SeamSearch, place_seams

FPS = 25
OVERLAP = 8


def speech_with_a_seam_after_its_pause(folder: Path, frames_after: int) -> tuple[Path, int, tuple[float, float]]:
    """Real speech with one pause, cut to a length whose balanced 2-segment plan puts the seam's overlap
    `frames_after` frames after the pause ends. Returns (audio, frames, the pause in seconds)."""
    speech = make_speech(folder / "speech_full.wav", [
        "Good morning everyone, and welcome back to the show.",
        "Today we will look at how long videos are split into parts, generated side by side, and joined again "
        "so that nobody can tell where one part ends and the next begins."], pause_s=0.8)
    pause = next(p for p in silences(speech) if p[1] - p[0] > 0.5)
    seam = int(np.ceil(pause[1] * FPS)) + frames_after
    frames = 2 * seam + OVERLAP  # plan_segments' balanced seam: (frames + overlap) / 2 - overlap
    assert plan_segments(frames, 2, OVERLAP).segments[1].start == seam
    audio = folder / "speech.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(speech), "-t", f"{frames / FPS:.4f}",
                    str(audio)], check=True)
    assert total_frames_for(media_duration(audio, "a"), FPS) == frames
    return audio, frames, pause


def in_pause(start: int, end: int, pauses: list[tuple[float, float]]) -> bool:
    """Whether output frames [start, end) lie inside one pause (to half a frame)."""
    return any(a - 0.5 / FPS <= start / FPS and end / FPS <= b + 0.5 / FPS for a, b in pauses)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_with_a_seam_after_its_pause(tmp_path_factory.mktemp("speech"), frames_after=6)


def test_the_envelope_hears_the_pauses_silencedetect_finds(speech):
    audio, frames, pause = speech
    envelope = loudness_envelope(audio, FPS, frames)
    assert len(envelope) == frames
    inside = envelope.levels_db[int(np.ceil(pause[0] * FPS)):int(pause[1] * FPS)]
    assert len(inside) >= 15 and (inside < -60).all()
    assert envelope.median_db > -35  # mostly speech
    assert envelope.level_db(0, frames) > envelope.median_db - 10


def test_frames_past_the_audio_are_silent(tmp_path):
    audio = make_speech(tmp_path / "short.wav", ["One."])
    frames = total_frames_for(media_duration(audio, "a"), FPS)
    envelope = loudness_envelope(audio, FPS, frames + 20)
    assert (envelope.levels_db[-20:] == SILENCE_DB).all()


def test_a_seam_moves_into_the_pause_when_the_budget_allows(speech):
    audio, frames, pause = speech
    balanced = plan_segments(frames, 2, OVERLAP)
    seam = balanced.segments[1]
    assert not in_pause(seam.start, seam.start + OVERLAP, silences(audio))  # the balanced seam is in speech
    envelope = loudness_envelope(audio, FPS, frames)
    placed = place_seams(balanced, SeamSearch(envelope.levels_db, OVERLAP, 0.35, parallelism=2))
    moved = placed.plan.segments[1]
    assert in_pause(moved.start, moved.start + OVERLAP, silences(audio)), (moved, silences(audio))
    assert placed.shifts == (moved.start - seam.start,) and placed.shifts[0] < 0
    # It moved no further than it had to: the overlap ends where the pause does (to a frame).
    assert abs((moved.start + OVERLAP) - pause[1] * FPS) <= 1.5
    # The cost: segment 1 got longer by the shift and finishes that much later; nothing thrown away.
    assert placed.cost_frames == -placed.shifts[0] <= placed.budget_frames
    assert placed.budget_frames == pytest.approx(0.35 * max(s.frames for s in balanced.segments))
    assert placed.plan.segments[0].start == 0 and placed.plan.segments[-1].end == frames
    assert placed.plan.segments[0].end - placed.plan.segments[1].start == OVERLAP


def test_a_seam_stays_balanced_without_budget_and_within_a_small_one(speech):
    audio, frames, _ = speech
    balanced = plan_segments(frames, 2, OVERLAP)
    envelope = loudness_envelope(audio, FPS, frames)
    off = place_seams(balanced, SeamSearch(envelope.levels_db, OVERLAP, 0.0, parallelism=2))
    assert off.plan == balanced and off.shifts == (0,) and off.cost_frames == 0
    small = place_seams(balanced, SeamSearch(envelope.levels_db, OVERLAP, 0.03, parallelism=2))
    assert small.cost_frames <= small.budget_frames < 4
    assert abs(small.shifts[0]) <= small.budget_frames
    moved = small.plan.segments[1]
    assert not in_pause(moved.start, moved.start + OVERLAP, silences(audio))  # out of reach


def test_steady_sound_leaves_seams_where_they_are():
    balanced = plan_segments(1000, 4, 40)
    steady = np.full(1000, -20.0) + np.random.default_rng(1).normal(0, 0.3, 1000)
    placed = place_seams(balanced, SeamSearch(steady, 10, 0.5, parallelism=4))
    assert placed.plan == balanced and placed.cost_frames == 0


def test_on_a_frame_grid_a_seam_moves_into_the_last_segments_slack_for_free():
    """InfiniteTalk's 72k + 9 grid: segment 0 generates 801 frames whatever its length below that, and the last
    segment has frames to spare, so moving the seam earlier costs nothing; later would cost a whole window."""
    grid = FrameGrid(72, 9, 81)
    balanced = plan_segments(1500, 2, 40, 81, 1017, grid)
    assert [s.frames for s in balanced.segments] == [801, 739]
    levels = np.full(1500, -20.0)
    levels[700:730] = -70.0  # a pause 31-61 frames before the balanced overlap [761, 801)
    levels[830:860] = -90.0  # a quieter one after it: unaffordable
    placed = place_seams(balanced, SeamSearch(levels, 10, 0.03, 2, grid, 81, 1017))
    first, second = placed.plan.segments
    assert placed.cost_frames == 0 and grid.round_up(first.frames) == 801 and grid.round_up(second.frames) == 801
    quietest = min(range(second.start, first.end - 9), key=lambda f: levels[f:f + 10].mean())
    assert 700 <= quietest and quietest + 10 <= 730  # the blend fits in the pause
    assert placed.shifts[0] < 0


def test_queued_segments_count_the_delay_they_pass_on():
    """Four segments on two instances: a longer first segment delays the segments queued behind it, so the job
    ends as much later as the seam moved."""
    balanced = plan_segments(800, 2, 8, max_segment_frames=250)
    assert len(balanced.segments) == 4
    levels = np.full(800, -20.0)
    start = balanced.segments[1].start
    levels[start + 12:start + 30] = -80.0  # a pause after seam 0
    placed = place_seams(balanced, SeamSearch(levels, 8, 0.1, parallelism=2, longest=250))
    assert placed.shifts == (12, 0, 0)  # the nearest place where the whole blend is in the pause
    assert placed.cost_frames == 12 <= placed.budget_frames == pytest.approx(0.1 * 2 * 206)
    tight = place_seams(balanced, SeamSearch(levels, 8, 0.1, parallelism=2, longest=210))
    assert tight.shifts[0] <= 4 and max(s.frames for s in tight.plan.segments) <= 210


@pytest.mark.parametrize("seed", range(20))
def test_every_placed_plan_covers_the_video_within_the_limits(seed):
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(200, 3000))
    parallelism = int(rng.integers(2, 9))
    overlap = int(rng.choice([0, 4, 8, 40]))
    grid = FrameGrid(72, 9, 81) if seed % 2 else FrameGrid()
    shortest = max(81 if seed % 2 else 1, 2 * overlap)
    balanced = plan_segments(frames, parallelism, overlap, shortest, 1017, grid)
    levels = rng.uniform(-80, -10, frames)
    placed = place_seams(balanced, SeamSearch(levels, 10, 0.2, parallelism, grid, shortest, 1017))
    segments = placed.plan.segments
    assert segments[0].start == 0 and segments[-1].end == frames and len(segments) == len(balanced.segments)
    for before, after in zip(segments, segments[1:]):
        assert before.end - after.start == placed.plan.overlap == balanced.overlap
    if len(segments) > 1:
        assert all(shortest <= s.frames <= 1017 for s in segments)
    assert placed.cost_frames <= placed.budget_frames + 1e-6
    assert all(abs(shift) <= 50 * len(segments) for shift in placed.shifts)
