"""The client's RunPod endpoint path, and the worker's progress updates on RunPod, end to end: the real
worker in production mode (`python handler.py` under the real runpod SDK, real CPU ComfyUI instances)
takes its jobs from local_platform/runpod_standin.py, a local server that speaks RunPod's protocol on both sides
(/run, /status, /cancel for clients; job-take, job-done, job-stop for the SDK), and the real client talks
to it as to https://api.runpod.ai/v2 (RUNPOD_ENDPOINT_BASE_URL)."""

from __future__ import annotations

import math
import signal
import time

import pytest

from media_samples.factory import frame_count, make_image, make_index_video, make_tone, media_duration
from tests.support.client_run import RunningClient, client_env, run_client
from tests.conftest import shifted_port
from local_platform.runpod_standin import RunPodStandIn
from local_platform.workers import WorkerOnPlatform


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    standin = RunPodStandIn()
    worker = WorkerOnPlatform(tmp_path_factory.mktemp("platform-worker"), api_port=0, comfy_port=shifted_port(8420),
                              env={**standin.worker_env(), "MAX_DURATION_S": "120",
                                   "PROGRESS_INTERVAL_S": "0.2"}).start(standin)
    yield standin, worker
    worker.stop()
    standin.close()


def endpoint_env(standin: RunPodStandIn, key: str | None = None) -> dict:
    return client_env(RUNPOD_ENDPOINT_BASE_URL=standin.api_base, RUNPOD_API_KEY=key or standin.api_key)


def test_a_job_through_the_endpoint_shows_progress_from_status_and_saves_the_video(platform, tmp_path):
    standin, worker = platform
    image = make_image(tmp_path / "face.png", 96, 96)
    speech = make_tone(tmp_path / "speech.wav", 8.0)
    out = tmp_path / "out.mp4"
    result = run_client("submit", "--endpoint", standin.endpoint_id, "--image", str(image), "--audio", str(speech),
                        "--width", "128", "--height", "96", "-o", str(out), "--poll-s", "0.1",
                        env=endpoint_env(standin))
    assert result.returncode == 0, result.stdout + result.stderr + worker.log_tail()
    assert frame_count(out) == math.ceil(8.0 * 25) and abs(media_duration(out, "a") - 8.0) < 0.03
    assert "from the response (base64)" in result.stdout

    # What the worker sent with runpod.serverless.progress_update, as RunPod's /status showed it.
    job = next(j for j in standin.jobs.values() if j.status == "COMPLETED" and j.input.get("width") == 128)
    assert len(job.updates) >= 2, job.updates
    assert all({"stage", "percent", "eta_s", "elapsed_s", "segments", "message"} <= set(u) for u in job.updates)
    percents = [u["percent"] for u in job.updates]
    assert percents == sorted(percents) and all(p < 100 for p in percents)
    assert "generating" in {u["stage"] for u in job.updates}
    assert all(u["stage"] != "done" for u in job.updates)  # the result itself says that
    generating = [u for u in job.updates if u["stage"] == "generating"]
    assert {len(u["segments"]) for u in generating} == {2}
    # ... and what the client showed of it
    shown = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert any("generating" in line for line in shown) and shown[-1].lstrip("[#-] ").startswith("100.0%")
    assert "segment 1 on cpu" in result.stdout


def test_ctrl_c_cancels_the_job_on_the_endpoint_and_the_worker_takes_the_next(platform, tmp_path):
    standin, worker = platform
    video = make_index_video(tmp_path / "long.mp4", 900, 25, 320, 192)
    speech = make_tone(tmp_path / "long.wav", 36.0)
    client = RunningClient.start("submit", "--endpoint", standin.endpoint_id, "--video", str(video),
                                 "--audio", str(speech), "--width", "320", "--height", "192", "--poll-s", "0.3",
                                 "-o", str(tmp_path / "never.mp4"), env=endpoint_env(standin))
    job_id = client.wait_for("submitted", 60, "stderr").split()[1]
    client.wait_for("generating", 120)
    client.process.send_signal(signal.SIGINT)
    assert client.finish() == 130
    assert [line.rstrip("\n") for line in client.stderr][-2:] == [
        f"cancelling job {job_id} (Ctrl-C again to leave without waiting) ...", f"job {job_id} cancelled"]
    assert standin.jobs[job_id].status == "CANCELLED"
    deadline = time.monotonic() + 30
    while job_id not in standin.stops_delivered and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_id in standin.stops_delivered, "the SDK's stop channel carried the cancel to the worker"
    deadline = time.monotonic() + 60
    while worker.leftover_job_files() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.leftover_job_files() == [], "the worker stopped the job and removed its files"

    image = make_image(tmp_path / "next.png")
    result = run_client("submit", "--endpoint", standin.endpoint_id, "--image", str(image), "--audio",
                        str(make_tone(tmp_path / "next.wav", 2.0)), "--width", "64", "--height", "64",
                        "-o", str(tmp_path / "next.mp4"), "--quiet", env=endpoint_env(standin))
    assert result.returncode == 0, result.stderr + worker.log_tail()
    assert frame_count(tmp_path / "next.mp4") == 50


def test_the_workers_error_comes_through_the_endpoint_verbatim(platform, tmp_path):
    standin, _ = platform
    image = make_image(tmp_path / "face.png")
    result = run_client("submit", "--endpoint", standin.endpoint_id, "--image", str(image), "--audio",
                        str(make_tone(tmp_path / "a.wav", 1.0)), "--fps", "90", "--quiet", env=endpoint_env(standin))
    assert result.returncode == 1
    job = next(j for j in standin.jobs.values() if j.status == "FAILED" and j.input.get("fps") == 90)
    assert "fps" in job.error
    assert job.error in result.stderr.splitlines()


def test_a_wrong_api_key_is_named(platform, tmp_path):
    standin, _ = platform
    result = run_client("status", "some-job", "--endpoint", standin.endpoint_id, env=endpoint_env(standin, "wrong"))
    assert result.returncode == 1 and "401 Unauthorized; set RUNPOD_API_KEY" in result.stderr
