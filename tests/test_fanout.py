"""One job rendered by several workers of one endpoint, end to end: three real workers (`python handler.py`
under the real runpod SDK, one CPU ComfyUI instance each) take jobs from the RunPod stand-in's queue
(local_platform/runpod_standin.py); the worker that takes a job renders one segment itself and sends the others as
segment jobs through the same endpoint (the SDK's Endpoint client, RUNPOD_ENDPOINT_BASE_URL pointing at the
stand-in), where the other workers take them. A real S3 server (moto) carries what does not fit a request.
"""

from __future__ import annotations

import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import shifted_port
from media_samples.factory import frame_count, make_index_video, make_tone, media_duration, read_indices
from local_platform.runpod_standin import RunPodStandIn, StandInJob
from local_platform.s3_server import S3Server
from local_platform.workers import WorkerOnPlatform

pytestmark = pytest.mark.comfy  # three workers, each with its ComfyUI instance
PODS = ("pod-a", "pod-b", "pod-c")
BUCKET = "fanout-bucket"
# Frames for the jobs a test stops midway: a segment of ~800 of them takes ~50 s on a 2-core CPU, against ~1.6 s at
# restyle_job's 128x64, which a check or a cancel 2 s after the start can miss (it did once on CI)
SLOW_SIZE = (512, 256)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    standin, s3 = RunPodStandIn(), S3Server(BUCKET)
    root = tmp_path_factory.mktemp("endpoint")
    media, volume = root / "media", root / "volume" / "outputs"
    media.mkdir()
    volume.mkdir(parents=True)
    workers = []
    for number, pod in enumerate(PODS):
        env = {**standin.worker_env(pod), **s3.worker_env(), "RUNPOD_API_KEY": standin.api_key,
               "RUNPOD_ENDPOINT_BASE_URL": standin.api_base, "FANOUT_MAX_WORKERS": "2",
               "FANOUT_QUEUE_DEADLINE_S": "20", "FANOUT_STALL_S": "15", "FANOUT_COLD_START_S": "0",
               "FANOUT_PARENT_CHECK_S": "2",
               "FANOUT_INLINE_MB": "1", "ALLOW_PRIVATE_URLS": "1", "MAX_DURATION_S": "120",
               # pod-c's results do not fit a response: its segments come back through the bucket
               "MAX_RESPONSE_MB": "0.02" if pod == "pod-c" else "15"}
        worker = WorkerOnPlatform(root / pod, api_port=0, comfy_port=shifted_port(8520 + 10 * number), instances=1,
                                  env=env)
        worker.env.update(ALLOWED_INPUT_ROOTS=str(media), OUTPUT_VOLUME_DIR=str(volume))  # shared by the endpoint
        workers.append(worker.start(standin))
    yield standin, workers, media, s3
    for worker in workers:
        worker.stop()
    standin.close()
    s3.close()


def restyle_job(media: Path, name: str, frames: int, audio_rate: int = 16000, size: tuple[int, int] = (128, 64)) -> dict:
    video = make_index_video(media / f"{name}.mp4", frames, 25)
    audio = make_tone(media / f"{name}.wav", frames / 25, rate=audio_rate)
    return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
            "width": size[0], "height": size[1], "output": {"destination": "volume"}}


def segment_jobs(standin: RunPodStandIn, parent: StandInJob) -> list[StandInJob]:
    return [j for j in list(standin.jobs.values())
            if (j.input.get("segment_job") or {}).get("parent_job") == parent.id]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def finished(standin: RunPodStandIn, job: StandInJob, timeout_s: float = 300) -> dict:
    job = standin.wait_final(job.id, timeout_s)
    assert job.status == "COMPLETED", (job.status, job.error)
    return job.output


def check_video(output: dict, frames: int) -> None:
    video = Path(output["video_path"])  # on the endpoint's shared volume
    assert output["frames"] == frames and frame_count(video) == frames
    assert read_indices(video) == list(range(frames))  # every frame once, in order, across the workers
    assert abs(media_duration(video, "a") - frames / 25) < 0.05


def test_a_job_fans_out_over_three_workers_and_comes_back_frame_exact(endpoint):
    standin, workers, media, s3 = endpoint
    standin.hold(["pod-c"])  # the job goes to pod-a or pod-b: pod-c then takes a segment job
    parent = standin.submit(restyle_job(media, "three", 300))
    wait_for(lambda: parent.worker is not None, 60, "a worker to take the job")
    standin.hold([])
    output = finished(standin, parent)
    check_video(output, 300)
    rendered_by = [s["worker"] for s in output["segments"]]
    assert len(output["segments"]) == 3 and rendered_by.count(None) == 1  # the parent rendered one itself
    children = segment_jobs(standin, parent)
    assert sorted(j.worker for j in children) == sorted(p for p in PODS if p != parent.worker)
    assert sorted(w for w in rendered_by if w) == sorted(j.worker for j in children)
    for child in children:
        assert child.status == "COMPLETED"
        assert child.policy["executionTimeout"] > 0 and child.policy["ttl"] > child.policy["executionTimeout"]
        request = child.input["segment_job"]["request"]
        assert request["audio"].startswith("data:audio/wav;base64,") and request["workers"] == 0  # inline
        parts = child.output["segment_result"]["parts"]
        # back inline where the result fits (pod-b's, pod-a's), through the bucket where it does not (pod-c's)
        assert {"key" if child.worker == "pod-c" else "data"} == {place for part in parts.values() for place in part
                                                                  if place in ("data", "key", "path")}, parts.keys()
    # the parent's progress showed the other workers' segments as they ran
    remote = [s for update in parent.updates for s in update.get("segments", [])
              if (s.get("instance") or "").startswith("worker ")]
    assert remote, "the parent's progress never showed a segment on another worker"
    assert s3.keys() == []


def test_media_over_the_request_limit_travel_through_the_bucket_and_are_removed(endpoint):
    standin, workers, media, s3 = endpoint
    # 48 kHz audio: each segment's slice is over FANOUT_INLINE_MB (1 MB) as base64
    parent = standin.submit(restyle_job(media, "big", 900, audio_rate=48000))
    output = finished(standin, parent)
    check_video(output, 900)
    children = segment_jobs(standin, parent)
    assert children and all(c.status == "COMPLETED" for c in children)
    for child in children:
        audio = child.input["segment_job"]["request"]["audio"]
        assert audio.startswith(f"{s3.endpoint}/{BUCKET}/videos/segments/"), audio[:80]
    assert {s["worker"] for s in output["segments"]} - {None}, "no segment was rendered by another worker"
    assert s3.keys() == []  # nothing left in the bucket after the job


def test_with_no_free_worker_the_parent_takes_its_segments_back(endpoint):
    standin, workers, media, s3 = endpoint
    parent = standin.submit(restyle_job(media, "alone", 200))
    wait_for(lambda: parent.worker is not None, 60, "a worker to take the job")
    others = [w.pod for w in workers if w.pod != parent.worker]
    standin.hold(others)  # every other worker busy: segment jobs stay queued
    try:
        output = finished(standin, parent, 300)
    finally:
        standin.hold([])
    check_video(output, 200)
    assert [s["worker"] for s in output["segments"]] == [None] * len(output["segments"])
    children = segment_jobs(standin, parent)
    assert children and all(c.status == "CANCELLED" for c in children)


def test_a_worker_killed_mid_segment_does_not_lose_the_segment(endpoint):
    standin, workers, media, s3 = endpoint
    parent = standin.submit(restyle_job(media, "killed", 300))
    wait_for(lambda: any(c.status == "IN_PROGRESS" for c in segment_jobs(standin, parent)), 120,
             "a segment job to be taken")
    victim_pod = next(c.worker for c in segment_jobs(standin, parent) if c.status == "IN_PROGRESS")
    victim = next(w for w in workers if w.pod == victim_pod)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    try:
        output = finished(standin, parent, 300)
        check_video(output, 300)
        assert victim_pod not in {s["worker"] for s in output["segments"]}
    finally:
        for proc in victim.comfy_processes():
            proc.kill()
        victim.start(standin)
    assert victim.leftover_job_files() == []  # what the killed run left is removed when the worker starts again


def test_cancelling_the_parent_cancels_every_segment_job_and_leaves_nothing(endpoint):
    standin, workers, media, s3 = endpoint
    parent = standin.submit(restyle_job(media, "cancelled", 1500, size=SLOW_SIZE))
    wait_for(lambda: len([c for c in segment_jobs(standin, parent) if c.status == "IN_PROGRESS"]) == 2, 120,
             "both segment jobs to run")
    standin.cancel(parent.id)
    wait_for(lambda: all(c.status not in ("IN_QUEUE", "IN_PROGRESS") for c in segment_jobs(standin, parent)), 60,
             "every segment job to end")
    for child in segment_jobs(standin, parent):  # cancelled by the parent, or stopped by its own watch first
        assert child.status == "CANCELLED" or (
            child.status == "FAILED" and f"its parent job {parent.id} has ended (CANCELLED)" in child.error), child
    # each worker ends its part: no job folder, no file in its instances' input and output folders
    wait_for(lambda: all(not w.leftover_job_files() for w in workers), 60, "the workers' job folders to empty")
    for worker in workers:
        leftovers = [p for p in worker.instances_dir.rglob("*") if p.is_file() and p.parent.name in ("input", "output")]
        assert leftovers == [], leftovers
        assert worker.alive()
    assert s3.keys() == []
    # and the endpoint serves the next job
    output = finished(standin, standin.submit(restyle_job(media, "after", 100)))
    check_video(output, 100)


@contextmanager
def parent_worker_killed(endpoint, name: str):
    """A long job (of SLOW_SIZE frames) sent as a parent with two segment jobs on the other workers, its worker
    SIGKILLed once both run; yields (parent, its segment jobs, the other workers) and starts the killed worker again
    afterwards."""
    standin, workers, media, s3 = endpoint
    parent = standin.submit(restyle_job(media, name, 2500, size=SLOW_SIZE))
    wait_for(lambda: len([c for c in segment_jobs(standin, parent) if c.status == "IN_PROGRESS"]) == 2, 120,
             "both segment jobs to run")
    dead = next(w for w in workers if w.pod == standin.jobs[parent.id].worker)
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait(10)
    try:
        yield parent, segment_jobs(standin, parent), [w for w in workers if w is not dead]
    finally:
        standin.cancel(parent.id)  # what RunPod does in the end with a dead worker's job; a no-op where it ended
        for proc in dead.comfy_processes():
            proc.kill()
        dead.start(standin)


def the_rest_is_clean_and_serving(endpoint, others, name: str) -> None:
    standin, _, media, _ = endpoint
    wait_for(lambda: all(not w.leftover_job_files() for w in others), 60, "their job folders to empty")
    output = finished(standin, standin.submit(restyle_job(media, name, 100)))
    check_video(output, 100)


def test_segment_jobs_of_a_parent_that_died_stop_by_themselves(endpoint):
    """The parent's worker is killed mid-job, so nothing cancels its segment jobs; once RunPod shows the parent
    ended (cancelled here), each segment job sees it at its next check (FANOUT_PARENT_CHECK_S, 2 s here) and stops,
    long before it would have finished, leaving its worker clean and serving."""
    standin = endpoint[0]
    with parent_worker_killed(endpoint, "orphaned") as (parent, children, others):
        standin.cancel(parent.id)
        stopped_at = time.monotonic()
        wait_for(lambda: all(c.status not in ("IN_QUEUE", "IN_PROGRESS") for c in children), 30,
                 "the orphaned segment jobs to stop")
        assert time.monotonic() - stopped_at < 15
        for child in children:
            assert child.status == "FAILED", child
            assert child.error == f"segment job stopped: its parent job {parent.id} has ended (CANCELLED)", child.error
        the_rest_is_clean_and_serving(endpoint, others, "after-orphans")


def test_segment_jobs_of_a_parent_shown_running_by_a_dead_worker_stop_when_its_progress_stops(endpoint):
    """RunPod may go on showing a dead worker's job IN_PROGRESS for a while: nothing ends the parent, its progress
    only stops changing (a live parent's changes every PROGRESS_INTERVAL_S, 1 s here). Each segment job stops once
    the parent has reported nothing for FANOUT_STALL_S (15 s here), while the parent still shows as running."""
    standin = endpoint[0]
    with parent_worker_killed(endpoint, "stalled") as (parent, children, others):
        killed_at = time.monotonic()
        wait_for(lambda: all(c.status not in ("IN_QUEUE", "IN_PROGRESS") for c in children), 60,
                 "the segment jobs of the silent parent to stop")
        waited = time.monotonic() - killed_at
        assert standin.jobs[parent.id].status == "IN_PROGRESS"  # the stall stopped them, not the parent's end
        assert 13 < waited < 40, waited  # the last update came at most a second before the kill
        for child in children:
            assert child.status == "FAILED", child
            assert re.fullmatch(rf"segment job stopped: its parent job {parent.id} has reported nothing for "
                                r"1\d s \(FANOUT_STALL_S\): its worker is gone", child.error), child.error
        the_rest_is_clean_and_serving(endpoint, others, "after-stall")


@pytest.mark.parametrize("change, field, words", [
    ({"request": {"audio": "/etc/passwd"}}, "segment_job.request.audio", "never as a path"),
    ({"request": {"workers": 2}}, "segment_job.request.workers", "no fan-out"),
    ({"request": {"workflow": None}}, "segment_job.request.workflow", "names its template"),
    ({"index": 5}, "segment_job", "index: 5 is not a segment of the plan"),
    ({"segments": [[0, 50], [60, 100]]}, "segment_job", "must start inside the previous one"),
    ({"parent_job": "../../etc"}, "segment_job", "parent_job"),
    ({"extra": 1}, "segment_job", "extra"),
])
def test_hostile_segment_jobs_are_refused_with_the_field_named(endpoint, change, field, words):
    standin, workers, media, s3 = endpoint
    request = {"workflow": "restyle", "input_type": "video", "video": "data:video/mp4;base64,AAAA",
               "audio": "data:audio/wav;base64,AAAA", "width": 128, "height": 64, "workers": 0}
    job = {"parent_job": "p1", "request": request, "segments": [[0, 50], [42, 100]], "index": 1}
    for key, value in change.items():
        if key == "request":
            job["request"] = {**request, **value}
        else:
            job[key] = value
    answer = standin.wait_final(standin.submit({"segment_job": job}).id, 60)
    assert answer.status == "FAILED" and answer.error.startswith(f"{field}:"), answer.error
    assert words in answer.error
    assert all(w.alive() for w in workers)
