"""Live progress: through the real local API on a real multi-segment CPU job (ComfyUI's websocket reports
combined into one figure), and the tracker's arithmetic with a clock of the test's."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from comfy_manager.client import PromptProgress
from media_samples.factory import make_index_video, make_tone
from local_platform.workers import WorkerApi
from tests.test_faults import wait_until
from worker.planning.learned import LearnedRates
from worker.templates.frame_grid import FrameGrid
from worker.planning.segment_plan import plan_segments
from worker.progress.tracker import JobProgressTracker
from worker.templates.template import available_templates

STAGES = ["preparing", "generating", "stitching", "delivering", "done"]


def progress_job(worker: WorkerApi, frames: int = 300) -> dict:
    """A restyle job of two segments that keeps each CPU instance busy for a few seconds."""
    video = make_index_video(worker.media / f"progress_{frames}.mp4", frames, 25, 320, 192)
    audio = make_tone(worker.media / f"progress_{frames}.wav", frames / 25)
    return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
            "width": 320, "height": 192, "fps": 25, "output": {"destination": "volume"}}


def run_and_watch(worker: WorkerApi, job_input: dict, poll_s: float = 0.1) -> tuple[dict, list[dict], float]:
    """Submits with /run, runs it with the local /status (which returns at the end) and meanwhile polls the
    worker's GET /progress/{id}; returns (the /status answer, every progress report seen, wall seconds)."""
    job_id = requests.post(worker.url + "/run", json={"input": job_input}, timeout=30).json()["id"]
    final: dict = {}
    started = time.monotonic()
    runner = threading.Thread(target=lambda: final.update(
        requests.post(f"{worker.url}/status/{job_id}", timeout=600).json()))
    runner.start()
    reports = []
    while runner.is_alive():
        answer = requests.get(f"{worker.url}/progress/{job_id}", timeout=10)
        assert answer.status_code == 200, answer.text
        reports.append(answer.json())
        time.sleep(poll_s)
    runner.join()
    wall = time.monotonic() - started
    reports.append(requests.get(f"{worker.url}/progress/{job_id}", timeout=10).json())
    return final, reports, wall


def test_progress_reaches_the_local_api_rises_to_100_and_has_a_sane_eta(worker):
    job = progress_job(worker)
    first, reports, _ = run_and_watch(worker, job)
    assert first["status"] == "COMPLETED", first
    updates = [r["progress"] for r in reports if r.get("progress")]
    assert len({u["elapsed_s"] for u in updates}) >= 3, "progress must arrive while the job runs"
    percents = [u["percent"] for u in updates]
    assert percents == sorted(percents), f"percent went down: {percents}"
    assert reports[-1]["status"] == "COMPLETED"
    assert updates[-1]["stage"] == "done" and updates[-1]["percent"] == 100
    assert all(u["percent"] < 100 for u in updates if u["stage"] != "done")
    stages = [u["stage"] for u in updates]
    assert [s for s in STAGES if s in stages] == sorted(set(stages), key=STAGES.index)  # in order
    assert "generating" in stages

    # Every segment of the plan, each on its own instance, with its own percent from ComfyUI's reports.
    output = first["output"]
    segments_seen = [u["segments"] for u in updates if u["stage"] == "generating" and u["segments"]]
    planned = segments_seen[-1]
    assert [(s["start_frame"], s["end_frame"]) for s in planned] == \
        [(s["start_frame"], s["end_frame"]) for s in output["segments"]]
    assert all(s["windows"] == s["frames"] for s in planned)  # restyle has no grid: a window per frame
    running = [s for seen in segments_seen for s in seen if s["state"] == "running"]
    assert {s["instance"] for s in running} == {s["instance"] for s in output["segments"]}
    assert any(0 < s["percent"] < 100 for s in running), "a segment's percent between its ends"
    # The node each segment is in (from ComfyUI's `executing` reports). Its steps (SaveSegmentVideo's frames
    # written) last well under a poll on a fast CPU: tests/test_gpu_standin.py checks every one of those reports.
    nodes = {s["node"].split(" ", 1)[1] for s in running if s["node"]}
    restyle = {"LoadVideo", "GetVideoComponents", "ImageScale", "ImageSharpen", "SaveSegmentVideo"}
    assert nodes and nodes <= restyle, nodes
    for s in output["segments"]:  # the response's timeline fields
        assert 0 < s["started_s"] < s["finished_s"] <= output["timings"]["total"]
        assert s["started_s"] >= output["timings"]["prepare"] - 0.01

    # Now the worker has learned how long such a job takes: the ETA is there from the plan on, and sane.
    second, reports, wall = run_and_watch(worker, job)
    assert second["status"] == "COMPLETED", second
    total = second["output"]["timings"]["total"]
    updates = [r["progress"] for r in reports if r.get("progress")]
    generating = [u for u in updates if u["stage"] == "generating"]
    assert generating and all(u["eta_s"] is not None and u["eta_s"] >= 0 for u in generating)
    for u in generating:
        predicted = u["elapsed_s"] + u["eta_s"]
        assert total / 2.5 < predicted < total * 2.5, f"at {u['elapsed_s']} s: ETA {u['eta_s']} s, took {total} s"
    percents = [u["percent"] for u in updates]
    assert percents == sorted(percents) and percents[-1] == 100
    assert worker.leftover_job_files() == []


def test_progress_of_an_unknown_job_is_404(worker):
    answer = requests.get(f"{worker.url}/progress/no-such-job", timeout=10)
    assert answer.status_code == 404 and "no-such-job" in answer.json()["error"]
    assert requests.post(f"{worker.url}/cancel/no-such-job", timeout=10).status_code == 404


# ------------------------------------------------------------------------------------ the tracker's arithmetic


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GRAPH = {"1": {"class_type": "LoadVideo"}, "2": {"class_type": "KSampler"}, "3": {"class_type": "SaveSegmentVideo"}}
TEMPLATE = available_templates()["restyle"]


def tracker_with_plan(clock: Clock, learned: LearnedRates | None) -> JobProgressTracker:
    tracker = JobProgressTracker(None, clock(), clock=clock)
    tracker.planned(plan_segments(200, 2, 8), TEMPLATE, learned)
    tracker.stage("generating")
    return tracker


def test_a_segment_percent_weighs_its_nodes_by_their_learned_share():
    clock = Clock()
    learned = LearnedRates(0.1, 0.0, 0.0, {"1 LoadVideo": 0.1, "2 KSampler": 0.8, "3 SaveSegmentVideo": 0.1})
    tracker = tracker_with_plan(clock, learned)
    tracker.segment_started(0, "cpu0:8188", None, GRAPH)
    tracker.segment_event(0, PromptProgress("executing", "1"))
    tracker.segment_event(0, PromptProgress("executing", "2"))
    tracker.segment_event(0, PromptProgress("progress", "2", 5, 10))
    assert tracker.snapshot().segments[0].percent == pytest.approx(10 + 40)
    assert tracker.snapshot().segments[0].node == "2 KSampler"
    assert tracker.snapshot().segments[0].node_steps == (5, 10)
    tracker.segment_event(0, PromptProgress("cached", nodes=("3",)))
    assert tracker.snapshot().segments[0].percent == pytest.approx(60)
    tracker.segment_retrying(0)  # the instance died: the segment starts over elsewhere
    segment = tracker.snapshot().segments[0]
    assert (segment.state, segment.percent, segment.attempt) == ("waiting", 0, 1)


def test_nodes_count_alike_before_the_worker_has_learned_anything():
    clock = Clock()
    tracker = tracker_with_plan(clock, None)
    tracker.segment_started(1, "cpu1:8189", None, GRAPH)
    tracker.segment_event(1, PromptProgress("executing", "1"))
    tracker.segment_event(1, PromptProgress("executing", "2"))
    assert tracker.snapshot().segments[1].percent == pytest.approx(100 / 3, abs=0.1)


def test_eta_from_the_learned_rate_then_from_the_segments_own_pace_and_percent_never_goes_down():
    clock = Clock()
    # 104 frames per segment at 0.1 s a frame: 10.4 s each; 0.01 s a frame of stitch tail, none to deliver.
    learned = LearnedRates(0.1, 0.01, 0.0, {"1 LoadVideo": 0.0, "2 KSampler": 1.0, "3 SaveSegmentVideo": 0.0})
    tracker = tracker_with_plan(clock, learned)
    frames = [s.frames for s in plan_segments(200, 2, 8).segments]
    for index in (0, 1):
        tracker.segment_started(index, f"cpu{index}", None, GRAPH)
        tracker.segment_event(index, PromptProgress("executing", "2"))
    first = tracker.snapshot()
    assert first.eta_s == pytest.approx(0.1 * max(frames) + 0.01 * 200, abs=0.1)
    clock.now += 5
    for index in (0, 1):
        tracker.segment_event(index, PromptProgress("progress", "2", 1, 4))  # slower than learned: 25% in 5 s
    slow = tracker.snapshot()
    # a quarter done: its own pace (15 s left) counts a quarter, the learned rate (5.4 s left) the rest
    assert slow.eta_s == pytest.approx(0.25 * 15 + 0.75 * (0.1 * max(frames) - 5) + 2, abs=0.2)
    assert slow.percent >= first.percent
    clock.now += 1
    for index in (0, 1):
        tracker.segment_event(index, PromptProgress("progress", "2", 1.1, 4))  # ETA grows: percent holds
    assert tracker.snapshot().percent >= slow.percent
    for index in (0, 1):
        tracker.segment_done(index)
    tracker.stage("stitching")
    assert tracker.snapshot().eta_s == pytest.approx(2.0, abs=0.01)
    tracker.stage("done")
    assert (tracker.snapshot().percent, tracker.snapshot().eta_s) == (100, 0)


def test_a_segment_past_its_expected_time_with_nothing_done_yet_still_has_an_eta():
    clock = Clock()
    # 104 frames at 0.1 s a frame: 10.4 s expected; no stitch tail, nothing to deliver
    tracker = tracker_with_plan(clock, LearnedRates(0.1, 0.0, 0.0, {"1 LoadVideo": 0.0, "2 KSampler": 1.0,
                                                                    "3 SaveSegmentVideo": 0.0}))
    tracker.segment_started(0, "cpu0", None, GRAPH)
    tracker.segment_started(1, "cpu1", None, GRAPH)
    tracker.segment_event(1, PromptProgress("executing", "2"))
    clock.now += 5
    tracker.segment_event(1, PromptProgress("progress", "2", 1, 2))
    clock.now += 10
    tracker.segment_event(1, PromptProgress("progress", "2", 1.5, 2))  # 75% in 15 s: 5 s left
    # segment 0 has run 15 s of its 10.4 and reported nothing: as long again (it was None: "ETA ?")
    assert tracker.snapshot().eta_s == pytest.approx(15.0, abs=0.01)


def test_before_anything_is_learned_a_node_with_steps_sets_a_floor_under_the_eta():
    clock = Clock()
    tracker = tracker_with_plan(clock, None)
    for index in (0, 1):
        tracker.segment_started(index, f"cpu{index}", None, GRAPH)
        for node in ("1", "2"):
            tracker.segment_event(index, PromptProgress("executing", node))
    clock.now += 1
    for index in (0, 1):
        tracker.segment_event(index, PromptProgress("executing", "3"))
    clock.now += 4
    for index in (0, 1):
        tracker.segment_event(index, PromptProgress("progress", "3", 1, 4))  # a quarter of the save in 4 s
    progress = tracker.snapshot()
    # the nodes alone (2.25 of 3 done in 5 s) would say 1.7 s; the save's own pace says 12 s
    assert progress.eta_s == pytest.approx(12.0, abs=0.1)
    # percent: by stage and node progress (both segments 75% done), not from the ETA
    assert progress.percent == pytest.approx(2 + 88 * 0.75, abs=0.2)


def test_without_learned_rates_percent_follows_the_stage_until_segments_report():
    clock = Clock()
    tracker = JobProgressTracker(None, clock(), clock=clock)
    assert (tracker.snapshot().stage, tracker.snapshot().percent, tracker.snapshot().eta_s) == ("preparing", 0, None)
    tracker.planned(plan_segments(200, 2, 8), TEMPLATE, None)
    tracker.stage("generating")
    assert tracker.snapshot().eta_s is None and tracker.snapshot().percent == 2
    tracker.stage("stitching")
    assert tracker.snapshot().percent == 92 and "stitching" in tracker.snapshot().message


def test_updates_are_published_every_interval_and_at_each_stage():
    published = []
    with JobProgressTracker(published.append, interval_s=0.2) as tracker:
        time.sleep(0.7)
        tracker.stage("generating")
        time.sleep(0.05)
        tracker.finish()
    assert 3 <= len(published) <= 7
    assert published[-1].stage == "done" and published[-1].percent == 100
    assert any(p.stage == "generating" for p in published)


def test_a_segment_starting_ending_or_waiting_again_is_published_at_once():
    published = []

    def next_update(count: int):
        # 5 s, far below the 60 s interval: only the change itself publishes
        wait_until(lambda: len(published) >= count, 5, f"update {count} to be published")
        return [s.state for s in published[count - 1].segments]

    with JobProgressTracker(published.append, interval_s=60) as tracker:
        tracker.planned(plan_segments(200, 2, 8), TEMPLATE, None)
        tracker.stage("generating")
        assert next_update(1) == ["waiting", "waiting"]
        tracker.segment_started(0, "cpu:8188", None, {"1": {"class_type": "LoadVideo"}})
        assert next_update(2) == ["running", "waiting"]
        tracker.segment_remote(1, "pod-b", None)
        assert next_update(3) == ["running", "running"]
        tracker.segment_remote(1, "pod-b", {"percent": 10.0})  # each poll of the segment job: no state change
        time.sleep(0.2)
        assert len(published) == 3
        tracker.segment_done(0)
        assert next_update(4) == ["done", "running"]
        tracker.segment_retrying(1)
        assert next_update(5) == ["done", "waiting"]
        time.sleep(0.2)
        assert len(published) == 5  # nothing else changed: nothing more is sent


def test_infinitetalk_segments_report_their_sampling_windows_as_the_dry_run_counts_them():
    template = available_templates()["infinitetalk_image_single"]
    assert template.grid == FrameGrid(72, 9, 81)
    tracker = JobProgressTracker(None)
    # one segment each: 81 frames sample 1 window; 153 two (81, then 72 more); 297 four
    counts = []
    for frames in (81, 153, 225, 297):
        tracker.planned(plan_segments(frames, 1, 0, 81, None, template.grid), template, None)
        counts.append(tracker.snapshot().segments[0].windows)
    assert counts == [1, 2, 3, 4]


def test_a_job_that_fails_is_reported_failed_though_it_stopped_its_own_segments():
    """A segment that fails for good sets the job's cancel event to stop the others (worker/render/segments.py):
    the job's end is still FAILED. Only a cancel asked for (the local API, RunPod) ends it CANCELLED."""
    from worker.api.live_jobs import LiveJobs

    jobs = LiveJobs()
    jobs.started("a").set()  # what run_segments does when a segment fails for good
    jobs.ended("a", "segment 1 failed")
    assert jobs.report("a").status == "FAILED"
    jobs.started("b")
    assert jobs.cancel("b").status == "CANCELLED"
    jobs.ended("b", "the job was cancelled")
    assert jobs.report("b").status == "CANCELLED"
