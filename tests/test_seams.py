"""Seams: where the stitcher blends (seam_blend), what it reports, and whole jobs on real CPU ComfyUI instances
with real speech (espeak-ng), a workflow whose segments agree (restyle) and one made to drift apart
(tests/workflows/restyle_drift: each segment tinted by the mean colour of its own first frame)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from media_samples.factory import (make_image, make_index_video, make_tone, media_duration, read_indices, silences,
                                 write_split_segment, yuv420p_frames)
from tests.test_seam_placement import FPS, in_pause, speech_with_a_seam_after_its_pause
from worker.media import inputs
from worker.request.errors import JobInputError
from worker.job import run_job
from worker.media.loudness import LoudnessEnvelope
from worker.planning.segment_plan import plan_segments
from worker.output.response import JobResponse
from worker.output.seam_blend import BlendOptions, Span, blend_frame, choose_span
from worker.media.segment_format import SegmentStats
from worker.render.segment_video import SegmentVideo
from worker.output.stitch import OutputFormat, Stitcher
from client.report import job_summary

TEST_WORKFLOWS = Path(__file__).resolve().parent / "workflows"
OUTPUT = OutputFormat(width=128, height=64, fps=FPS, crf=19, preset="veryfast", audio_bitrate_kbps=192)
RED, BLUE, BLACK, WHITE = (110, 16, 16), (16, 16, 200), (16, 16, 16), (235, 235, 235)


# -- where to blend ----------------------------------------------------------------------------------

def test_a_span_goes_where_the_versions_agree_then_where_it_is_quiet():
    differ = np.array([9.0] * 12 + [0.5] * 12)
    assert choose_span(differ, None, 6).start >= 12
    loud_then_quiet = np.array([-20.0] * 16 + [-70.0] * 8)
    assert choose_span(np.zeros(24), loud_then_quiet, 6).start >= 16
    # Differences too small to see (under one 8-bit step) give way to the audio.
    assert choose_span(np.array([0.2] * 12 + [0.0] * 12), np.array([-70.0] * 12 + [-20.0] * 12), 6).end <= 12
    # Nothing to choose between: the centre; the span keeps a frame of each side around it when it can.
    assert choose_span(np.zeros(24), None, 6) == Span(9, 6)
    assert choose_span(np.zeros(8), None, 6) == Span(1, 6)
    assert choose_span(np.zeros(8), None, 10) == Span(0, 8)


def test_a_blend_takes_each_side_outside_its_span_and_fades_inside():
    black, white = np.zeros(4, np.uint8), np.full(4, 255, np.uint8)
    shades = [int(blend_frame(black, white, p, Span(3, 3))[0]) for p in range(8)]
    assert shades[:3] == [0, 0, 0] and shades[6:] == [255, 255]
    assert 0 < shades[3] < shades[4] < shades[5] < 255


# -- the stitcher's seams, on segments written as SaveSegmentVideo writes them --------------------------

def split_segments(folder: Path, plan, source: Path, change_head=None, stats=None) -> list[SegmentVideo]:
    """The plan's segments in the split form, cut from `source`; change_head(frames) alters segment 1's head."""
    videos = []
    for segment in plan.segments:
        clip = inputs.cut_video(source, folder / f"s{segment.index}.mp4", segment, FPS, 128, 64)
        frames = yuv420p_frames(clip, 128, 64)
        head = plan.overlap_with_previous(segment)
        if segment.index == 1 and change_head:
            frames[:head] = change_head(frames[:head])
        files = write_split_segment(frames, folder / f"seg{segment.index}", head, plan.overlap_with_next(segment),
                                    128, 64)
        stats_file = None
        if stats:
            stats_file = folder / f"seg{segment.index}_stats.json"
            stats(segment).write(stats_file)
        videos.append(SegmentVideo(files.get("body"), files.get("head"), files.get("tail"), split=True,
                                   stats=stats_file))
    return videos


def stitched(folder: Path, plan, videos, blend=BlendOptions(), loudness=None):
    folder.mkdir(exist_ok=True)
    with Stitcher(plan, folder / "chunks", make_tone(folder / "a.wav", plan.total_frames / FPS), OUTPUT,
                  blend=blend, loudness=loudness) as stitcher:
        for segment in reversed(plan.segments):
            stitcher.add_segment(segment.index, videos[segment.index])
        return stitcher.finish(folder / "out.mp4")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_index_video(tmp_path_factory.mktemp("src") / "index.mp4", 120, FPS)


def brighter_first_half(frames: list[bytes]) -> list[bytes]:
    """The first half of the frames 24 steps brighter (luma): a version that disagrees there, readable still."""
    changed = []
    for k, frame in enumerate(frames):
        data = np.frombuffer(frame, np.uint8).copy()
        if k < len(frames) // 2:
            data[:128 * 64] = np.minimum(255, data[:128 * 64].astype(int) + 24)
        changed.append(data.tobytes())
    return changed


def test_the_blend_moves_to_where_the_two_versions_agree(source, tmp_path):
    plan = plan_segments(120, 2, 24)  # overlap [48, 72)
    videos = split_segments(tmp_path, plan, source, change_head=brighter_first_half)
    result = stitched(tmp_path, plan, videos, BlendOptions(True, 6))
    assert read_indices(result.path) == list(range(120))  # frame-exact through the blend
    assert result.frames_copied == 120 - 24  # the bodies are still copied untouched
    (seam,) = result.seams
    assert (seam.overlap_start, seam.overlap_end) == (48, 72)
    assert 60 <= seam.blend_start and seam.blend_end <= 72 and seam.blend_end - seam.blend_start == 6
    assert seam.disagreement_blend == 0.0
    assert seam.disagreement_overlap == pytest.approx(24 * (2 / 3) / 2, abs=0.5)  # Y is 2/3 of the samples
    linear = stitched(tmp_path / "linear", plan, videos, BlendOptions(focused=False))
    (whole,) = linear.seams
    assert (whole.blend_start, whole.blend_end) == (48, 72) and whole.disagreement_blend == whole.disagreement_overlap
    assert read_indices(linear.path) == list(range(120))


def test_where_the_versions_agree_the_blend_goes_where_the_audio_is_quiet(source, tmp_path):
    plan = plan_segments(120, 2, 24)
    levels = np.full(120, -18.0)
    levels[50:57] = -75.0  # a short pause early in the overlap
    result = stitched(tmp_path, plan, split_segments(tmp_path, plan, source), BlendOptions(True, 5),
                      LoudnessEnvelope(levels, FPS))
    (seam,) = result.seams
    assert 50 <= seam.blend_start and seam.blend_end <= 57
    assert seam.audio_db == pytest.approx(-75.0 - (-18.0), abs=0.1)  # against the job's median
    assert seam.disagreement_overlap == 0.0 and seam.color_before == seam.color_after == 0.0
    assert read_indices(result.path) == list(range(120))


def test_the_report_takes_the_save_nodes_measurements(source, tmp_path):
    """SaveSegmentVideo's stats: frame-to-frame changes (the bodies' median) and colours before matching."""
    plan = plan_segments(120, 2, 24)

    def stats(segment):
        changes = [float(1 + segment.index)] * (segment.frames - 1)
        unmatched = [[100.0 + 6 * segment.index, 128.0, 128.0]] * segment.frames  # the sides were 6 apart in Y
        return SegmentStats(segment.frames, changes, True, unmatched)

    result = stitched(tmp_path, plan, split_segments(tmp_path, plan, source, stats=stats))
    (seam,) = result.seams
    assert seam.color_before == 6.0 and seam.color_after == 0.0
    assert result.change_median == 1.5 and result.color_matched  # bodies of 47 and 47 frames: 46 changes each
    assert seam.change_at_seam is not None and seam.change_at_seam > 0  # index frames change at every frame


# -- whole jobs on real ComfyUI instances ---------------------------------------------------------------

@pytest.fixture()
def seam_settings(settings):
    """The test settings with the test-only workflows, and seam placement off unless a test turns it on."""
    return settings.model_copy(update={"extra_workflow_dirs": (TEST_WORKFLOWS,), "seam_budget_percent": 0.0})


def drifting_source(media: Path) -> Path:
    """Index frames whose colours are laid out for a 2-segment plan of 120 frames with overlap 24 ([48, 72)):
    red before the overlap (segment 0 starts red), blue in its first half (segment 1 starts blue), dark in its
    second half, so that restyle_drift's two versions of the overlap differ most where it is bright."""
    def colours(i):
        return (RED if i < 48 else BLUE if i < 60 else BLACK), WHITE
    return make_index_video(media / "drifting.mp4", 120, FPS, colours=colours)


def drift_job(media: Path, **seams) -> dict:
    return {"workflow": "restyle_drift", "input_type": "video", "video": str(drifting_source(media)),
            "audio": str(make_tone(media / "tone.wav", 120 / FPS)), "width": 128, "height": 64, "fps": FPS,
            "overlap_frames": 24, "output": {"destination": "volume"}, "seams": seams}


def test_restyle_reports_seams_whose_sides_agree(pool, settings, media_dir):
    video = make_index_video(media_dir / "index.mp4", 150, FPS)
    audio = make_tone(media_dir / "tone.wav", 5.3)
    output = run_job({"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
                      "width": 128, "height": 64, "fps": FPS, "output": {"destination": "volume"}}, pool, settings)
    assert read_indices(Path(output["video_path"])) == list(range(133))
    (seam,) = output["seams"]
    first, second = output["segments"]
    assert (seam["overlap_start_frame"], seam["overlap_end_frame"]) == (second["start_frame"], first["end_frame"])
    assert seam["disagreement"] == seam["disagreement_at_blend"] == 0.0  # the same frames, the same nodes
    assert seam["color_difference_before"] == seam["color_difference_after"] == 0.0
    assert seam["overlap_start_frame"] <= seam["blend_start_frame"] < seam["blend_end_frame"] <= seam["overlap_end_frame"]
    summary = output["seam_summary"]
    assert summary["blend"] == "focused" and summary["color_matched"] is False  # restyle's default: off
    assert summary["change_median"] > 0 and seam["change_at_seam"] > 0  # index frames change at every frame
    assert summary["cost_frames"] <= summary["budget_frames"]
    lines = job_summary(JobResponse.model_validate(output).model_dump())  # the response as sent
    assert "seams: focused blend of 8 frames" in lines and "seam 0: frames" in lines
    # A source full of detail and motion: the segments' cuts of it are lossless, so their versions still agree.
    busy = media_dir / "testsrc2.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=256x128:rate=25:duration=4", "-c:v", "libx264", "-crf", "23", str(busy)], check=True)
    detailed = run_job({"workflow": "restyle", "input_type": "video", "video": str(busy), "audio": str(audio),
                        "width": 128, "height": 64, "fps": FPS, "output": {"destination": "volume"}}, pool, settings)
    assert detailed["seams"][0]["disagreement"] == 0.0 and detailed["seam_summary"]["change_median"] > 0


def test_a_drifting_workflow_is_blended_where_its_sides_agree(pool, seam_settings, media_dir):
    output = run_job(drift_job(media_dir, blend_frames=6), pool, seam_settings)
    video = Path(output["video_path"])
    assert output["frames"] == 120 and read_indices(video) == list(range(120))
    assert abs(media_duration(video, "a") - 4.8) < 0.03
    (seam,) = output["seams"]
    assert (seam["overlap_start_frame"], seam["overlap_end_frame"], seam["moved_frames"]) == (48, 72, 0)
    assert seam["disagreement"] > 2  # the two versions differ ...
    assert 60 <= seam["blend_start_frame"] and seam["blend_end_frame"] <= 72  # ... least in the dark half
    assert seam["disagreement_at_blend"] < 0.75 * seam["disagreement"]
    assert seam["color_difference_before"] == seam["color_difference_after"] > 2  # nothing matched them
    linear = run_job(drift_job(media_dir, blend="linear"), pool, seam_settings)["seams"][0]
    assert (linear["blend_start_frame"], linear["blend_end_frame"]) == (48, 72)
    assert linear["disagreement_at_blend"] == linear["disagreement"] == pytest.approx(seam["disagreement"], abs=0.05)


def test_colour_matching_to_the_source_frames_closes_the_gap(pool, seam_settings, media_dir):
    unmatched = run_job(drift_job(media_dir), pool, seam_settings)
    matched = run_job(drift_job(media_dir, color_match=True), pool, seam_settings)
    before, after = unmatched["seams"][0], matched["seams"][0]
    assert matched["seam_summary"]["color_matched"] and not unmatched["seam_summary"]["color_matched"]
    # The node measured the colours before matching: the same gap as the unmatched job's.
    assert after["color_difference_before"] == pytest.approx(before["color_difference_after"], abs=0.3)
    assert after["color_difference_after"] < before["color_difference_after"] / 3
    assert after["disagreement"] < before["disagreement"]
    assert read_indices(Path(matched["video_path"])) == list(range(120))
    assert matched["frames_copied"] == unmatched["frames_copied"] == 120 - 24


def test_seams_fall_in_speech_pauses_when_the_budget_allows(pool, seam_settings, media_dir):
    audio, frames, _ = speech_with_a_seam_after_its_pause(media_dir, frames_after=6)
    video = make_index_video(media_dir / "index.mp4", frames, FPS)
    job = {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio), "width": 128,
           "height": 64, "fps": FPS, "output": {"destination": "volume"}}
    pauses = silences(audio)

    balanced = run_job(job, pool, seam_settings)  # no budget: where the balanced plan puts it
    (seam,) = balanced["seams"]
    assert seam["moved_frames"] == 0 and balanced["seam_summary"]["cost_frames"] == 0
    assert seam["overlap_start_frame"] == plan_segments(frames, 2, 8).segments[1].start
    assert not in_pause(seam["blend_start_frame"], seam["blend_end_frame"], pauses)

    generous = seam_settings.model_copy(update={"seam_budget_percent": 35.0})
    output = run_job(job, pool, generous)
    (seam,) = output["seams"]
    assert seam["moved_frames"] < 0
    assert in_pause(seam["blend_start_frame"], seam["blend_end_frame"], pauses), (seam, pauses)
    assert seam["audio_db"] < -30  # far below the speech around it
    summary = output["seam_summary"]
    assert 0 < summary["cost_frames"] <= summary["budget_frames"]
    moved = Path(output["video_path"])
    assert output["frames"] == frames and read_indices(moved) == list(range(frames))
    assert abs(media_duration(moved, "a") - frames / FPS) < 0.03
    first, second = output["segments"]
    assert first["end_frame"] - second["start_frame"] == 8 and second["end_frame"] == frames


def test_a_whole_form_template_reports_its_seams(pool, settings, media_dir):
    image = make_image(media_dir / "face.png")
    output = run_job({"workflow": "still", "input_type": "image", "image": str(image),
                      "audio": str(make_tone(media_dir / "a.wav", 3.0)), "width": 64, "height": 64, "fps": FPS,
                      "output": {"destination": "volume"}}, pool, settings)
    (seam,) = output["seams"]
    # One image held: the overlap differs only by the whole form's lossy encode (CRF 12) on either side.
    assert seam["disagreement"] < 1 and seam["change_at_seam"] < 1
    assert output["seam_summary"]["change_median"] == 0.0  # measured by the node before encoding


def test_colour_matching_needs_a_template_that_links_a_reference(pool, settings, media_dir):
    image = make_image(media_dir / "face.png")
    job = {"workflow": "still", "input_type": "image", "image": str(image),
           "audio": str(make_tone(media_dir / "a.wav", 1.0)), "seams": {"color_match": True}}
    with pytest.raises(JobInputError, match=r"^seams.color_match: workflow 'still' has no colour reference"):
        run_job(job, pool, settings)
    with pytest.raises(JobInputError, match=r"seams.blend_frames: 1-200 \(got 0\)"):
        run_job({**job, "seams": {"blend_frames": 0}}, pool, settings)
    assert list(settings.job_work_dir.glob("*")) == []
