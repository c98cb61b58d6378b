"""Estimates and dry runs: a plan's windows at the template's measured speed or the worker's learned one."""

from __future__ import annotations

import time

import pytest

from media_samples.factory import make_image, make_tone
from worker.planning.estimate import assign_lanes, estimate, makespan, windows
from worker.job import run_job
from worker.planning.learned import Learned
from worker.planning.plan import Lane, plan_job, remote_lanes
from worker.planning.segment_plan import Segment
from worker.request.job_request import JobRequest
from worker.templates.template import available_templates

IT = "infinitetalk_image_single"


def it_request(**fields) -> JobRequest:
    return JobRequest(workflow=IT, image="face.png", audio="speech.wav", width=832, height=480, **fields)



def lanes(count: int) -> list[Lane]:
    return [Lane(f"gpu{i}") for i in range(count)]

def test_windows_follow_the_template_grid():
    template = available_templates()[IT]
    assert [windows(template, Segment(0, 0, n)) for n in (40, 81, 82, 153, 441, 842)] == [1, 1, 2, 2, 6, 12]
    assert windows(available_templates()["restyle"], Segment(0, 10, 110)) == 100  # no grid: a window a frame


def test_makespan_queues_segments_for_free_instances():
    assert makespan([10, 10], 2) == 10
    assert makespan([10, 10, 10], 2) == 20
    assert makespan([5, 10, 10], 1) == 25


def test_842_frames_are_12_windows_on_one_gpu_and_6_each_on_two():
    template = available_templates()[IT]
    request = it_request()
    result = plan_job(request, template, 842, lanes(2), Learned(0.0)).estimate
    assert result.basis.startswith("measured on ")
    by_count = {o.gpus: o for o in result.per_gpu_count}
    per_window = template.spec.speed.seconds_per_window["fast"]
    assert by_count[1].wall_s == pytest.approx(12 * per_window, abs=0.1) == by_count[1].gpu_s
    assert by_count[2].wall_s == pytest.approx(6 * per_window, abs=0.1)
    assert by_count[2].gpu_s == pytest.approx(12 * per_window, abs=0.1)
    assert result.wall_s == by_count[2].wall_s and result.load_s == template.spec.speed.load_s


def test_speed_scales_with_pixels_steps_and_preset():
    template = available_templates()[IT]
    plans = {1: plan_job(it_request(), template, 81, lanes(1), Learned(0.0)).segments}
    fast = estimate(it_request(), template, plans, 1).seconds_per_window
    assert fast == template.spec.speed.seconds_per_window["fast"]
    assert estimate(it_request(steps=8), template, plans, 1).seconds_per_window == pytest.approx(2 * fast)
    small = JobRequest(workflow=IT, image="x", audio="y", width=416, height=240)
    assert estimate(small, template, plans, 1).seconds_per_window == pytest.approx(fast / 4)
    full = estimate(it_request(quality="full"), template, plans, 1).seconds_per_window
    assert full == template.spec.speed.seconds_per_window["full"]


def test_a_learned_speed_wins_over_the_measured_one():
    template = available_templates()[IT]
    plans = {1: plan_job(it_request(), template, 153, lanes(1), Learned(0.0)).segments}
    result = estimate(it_request(), template, plans, 1, learned_s_per_frame=0.5)
    assert result.basis == "learned from this worker's jobs" and result.seconds_per_window == 36.0
    assert result.wall_s == 72.0  # 153 frames: 2 windows


def test_dry_run_plans_without_running_and_a_real_job_reports_its_estimate(pool, settings, media_dir):
    image, audio = make_image(media_dir / "face.png"), make_tone(media_dir / "speech.wav", 6.0)
    job = {"workflow": "still", "image": str(image), "audio": str(audio), "width": 128, "height": 96,
           "output": {"destination": "volume"}}
    planner = Learned(0.0)
    started = time.monotonic()
    dry = run_job({**job, "dry_run": True}, pool, settings, learned=planner)
    assert dry["dry_run"] is True and dry["frames"] == 150 and dry["instances_available"] == 2
    assert [(s["start_frame"], s["end_frame"]) for s in dry["segments"]][-1][1] == 150
    # The worker has run nothing yet: the speed `still` declares (measured on two CPU cores), scaled to the size
    declared = dry["estimate"]
    assert declared["basis"] == "measured on two CPU cores, two instances at once, scaled to 128x96"
    assert declared["seconds_per_window"] == round(0.09 * 128 * 96 / (512 * 512), 3) and declared["load_s"] is None
    assert time.monotonic() - started < 10 and not list(settings.output_volume_dir.glob("*.mp4"))

    real = run_job(job, pool, settings, learned=planner)
    assert real["estimate"] == declared and real["frames"] == 150
    again = run_job({**job, "dry_run": True}, pool, settings, learned=planner)
    learned = again["estimate"]
    assert learned["basis"] == "learned from this worker's jobs" and learned["seconds_per_window"] > 0
    assert [o["gpus"] for o in learned["per_gpu_count"]] == [1, 2]
    assert learned["per_gpu_count"][1]["wall_s"] < learned["per_gpu_count"][0]["wall_s"]


def test_dry_run_of_infinitetalk_needs_no_model(pool, settings, media_dir):
    image, audio = make_image(media_dir / "face.png"), make_tone(media_dir / "speech.wav", 842 / 25)
    dry = run_job({"workflow": IT, "image": str(image), "audio": str(audio), "width": 832, "height": 480,
                   "dry_run": True, "output": {"destination": "volume"}}, pool, settings, learned=Learned(0.0))
    assert [s["windows"] for s in dry["segments"]] == [6, 6] and dry["quality"] == "fast"
    assert dry["estimate"]["per_gpu_count"][0]["gpu_s"] == dry["estimate"]["gpu_s"]


def test_other_workers_are_used_where_they_pay_off_after_their_cold_start():
    """842 frames of InfiniteTalk (12 windows) on one local GPU: two other workers at the template's speed
    save more than their start; for 81 frames (one window) no other worker pays off."""
    template = available_templates()[IT]
    per_window = template.spec.speed.seconds_per_window["fast"]
    start = 4 * per_window  # a cold start of another worker, in windows of this template
    others = remote_lanes(2, start_s=start)
    long = plan_job(it_request(), template, 842, lanes(1) + others, Learned(0.0))
    assert (len(long.segments.segments), long.remote, long.parallelism) == (3, frozenset({1, 2}), 3)  # 0: here
    by_lanes = {o.gpus: o for o in long.estimate.per_gpu_count}
    assert [o.workers for o in long.estimate.per_gpu_count] == [0, 1, 2]
    counts = [windows(template, s) for s in long.segments.segments]
    # the other workers' segments end after their start; the local one has none
    assert by_lanes[3].wall_s == pytest.approx(max(counts[0] * per_window, start + counts[1] * per_window,
                                                   start + counts[2] * per_window), abs=0.2)
    assert by_lanes[3].gpu_s == pytest.approx(sum(counts) * per_window + 2 * start, abs=0.2)  # the starts cost GPU time
    assert by_lanes[3].wall_s < by_lanes[1].wall_s
    short = plan_job(it_request(), template, 81, lanes(1) + others, Learned(0.0))
    assert short.remote == frozenset() and len(short.segments.segments) == 1
    none = plan_job(it_request(workers=0), template, 842, lanes(1) + others, Learned(0.0))
    assert none.remote == frozenset() and [o.gpus for o in none.estimate.per_gpu_count] == [1]


def test_other_workers_take_segment_after_segment_like_instances():
    """A job of more segments than lanes: each segment goes to the lane free first, other workers included,
    not only one segment each."""
    durations = [10.0] * 8
    away, wall = assign_lanes(durations, local=1, remote=3, start_s=5.0)
    assert sum(away) == 6 and away[0] is False  # the first segment here, at once; the others share out
    assert wall == pytest.approx(25.0)  # lanes: 0-10-20 here; 5-15-25 on each of three others (two take two)
    assert assign_lanes(durations, local=2) == ([False] * 8, pytest.approx(40.0))
