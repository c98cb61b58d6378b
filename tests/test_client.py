"""The client (`python -m client`, a process of its own) against the real local API (`handler.py
--rp_serve_api`, real CPU ComfyUI instances), with big media through a real S3 server (moto)."""

from __future__ import annotations

import math
import re
import signal
import time
import xml.etree.ElementTree as ET

import boto3
import pytest
import requests

from media_samples.factory import frame_count, make_image, make_index_video, make_tone, media_duration, read_indices
from tests.support.client_run import RunningClient, client_env, run_client
from tests.conftest import shifted_port
from tests.test_outputs import ACCESS_KEY, BUCKET, SECRET_KEY, make_mp4, s3_server  # noqa: F401 (a fixture)
from local_platform.workers import WorkerApi

MB = 1024**2


@pytest.fixture(scope="module")
def local_api(tmp_path_factory):
    """The real worker's local API, allowed to download from this machine (the test's S3 server)."""
    api = WorkerApi(tmp_path_factory.mktemp("client-worker"), api_port=shifted_port(8032),
                    comfy_port=shifted_port(8410), env={"ALLOW_PRIVATE_URLS": "1", "MAX_DURATION_S": "120",
                                                         "PROGRESS_INTERVAL_S": "0.2"}).start()
    yield api
    api.stop()


def test_files_in_video_out_with_live_progress_summary_and_timeline(local_api, tmp_path):
    image = make_image(tmp_path / "face.png", 96, 96)
    speech = make_tone(tmp_path / "speech.wav", 6.5)
    out, timeline = tmp_path / "out.mp4", tmp_path / "job.svg"
    result = run_client("submit", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "-o", str(out), "--width", "128", "--height", "96", "--timeline", str(timeline),
                        "--poll-s", "0.2", env=client_env(COLUMNS="80"))
    assert result.returncode == 0, result.stdout + result.stderr

    assert frame_count(out) == math.ceil(6.5 * 25)  # the default 25 fps
    assert abs(media_duration(out, "a") - 6.5) < 0.03
    assert "image: " in result.stderr and "inline" in result.stderr  # small files travel in the request
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert progress and any("ETA" in line for line in progress), result.stdout
    assert any("seg 0" in line for line in progress), "each GPU's segment is shown"
    # An 80-column terminal: every line fits, with its percent and ETA; the first job of the kind has an ETA
    # from the template's declared speed, never "?"
    assert all(len(line) <= 80 and "%" in line and "ETA " in line for line in progress), progress
    assert all("ETA ?" not in line for line in progress if "preparing" not in line), progress  # known once planned
    # the summary: client/report.py's, as the worker logs it too
    lines = result.stdout.splitlines()
    summary = lines[lines.index(next(line for line in lines if line.startswith("workflow "))):]
    assert summary[0] == "workflow still: 163 frames at 25 fps (6.52 s), 2 segments on 2 of 2 instances, overlap 4 frames"
    assert re.fullmatch(r"  segment 0 on cpu:\d+ +frames +0-84 +\(  84 frames\) +[\d.]+ s \(ComfyUI [\d.]+ s\), "
                        r"ran [\d.]+-[\d.]+ s into the job", summary[1]), summary[1]
    assert summary[3].startswith("  seams: focused blend of 4 frames, placement cost ")
    assert summary[4].startswith("  seam 0: frames ") and " blended (moved " in summary[4]
    assert re.fullmatch(r"  estimate: generation [\d.]+ s expected \(measured on two CPU cores, two instances at "
                        r"once, scaled to 128x96\), took [\d.]+ s", summary[5]), summary[5]
    assert summary[6].startswith("  timings: prepare ") and summary[-1] == f"  video: {out} ({out.stat().st_size / 1e6:.2f} MB, from the response (base64))"
    assert "None" not in result.stdout and "window" not in result.stdout
    logged = local_api.log_path.read_text()
    assert "\n".join(summary[:-2]) in logged  # the worker's log says the same, in the same words
    svg = ET.parse(timeline).getroot()
    tips = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("segment 0: node") and "SaveSegmentVideo" in t for t in tips)
    assert any(t.startswith("segment 1: frames") for t in tips)
    assert local_api.leftover_job_files() == []


def test_video_job_keeps_its_frames_through_the_client(local_api, tmp_path):
    video = make_index_video(tmp_path / "index.mp4", 120, 25)
    speech = make_tone(tmp_path / "speech.wav", 4.0)
    out = tmp_path / "restyled.mp4"
    result = run_client("submit", "--url", local_api.url, "--video", str(video), "--audio", str(speech),
                        "--width", "128", "--height", "64", "--destination", "volume", "-o", str(out), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copied from the worker's volume" in result.stdout  # the local API's volume is a folder here
    assert read_indices(out) == list(range(100))


def test_ctrl_c_cancels_the_job_and_the_worker_serves_the_next(local_api, tmp_path):
    video = make_index_video(tmp_path / "long.mp4", 900, 25, 320, 192)
    speech = make_tone(tmp_path / "long.wav", 36.0)
    client = RunningClient.start("submit", "--url", local_api.url, "--video", str(video), "--audio", str(speech),
                                 "--width", "320", "--height", "192", "--destination", "volume",
                                 "-o", str(tmp_path / "never.mp4"), "--poll-s", "0.3")
    job_id = client.wait_for("submitted", 60, "stderr").split()[1]
    client.wait_for("generating", 120)
    interrupted = time.monotonic()
    client.process.send_signal(signal.SIGINT)
    assert client.finish() == 130
    assert time.monotonic() - interrupted < 30
    errors = [line.rstrip("\n") for line in client.stderr]
    assert errors[-2:] == [f"cancelling job {job_id} (Ctrl-C again to leave without waiting) ...",
                           f"job {job_id} cancelled"]
    assert errors[errors.index(next(e for e in errors if "submitted" in e)) + 1:] == errors[-2:], errors  # said once
    report = requests.get(f"{local_api.url}/progress/{job_id}", timeout=10).json()
    assert report["status"] == "CANCELLED"
    assert {s["state"] for s in report["progress"]["segments"]} <= {"done", "cancelled"}
    assert any(s["state"] == "cancelled" for s in report["progress"]["segments"])
    assert report["progress"]["eta_s"] is None and report["progress"]["message"].startswith("cancelled: ")
    log = local_api.log_path.read_text()
    interrupted = re.findall(rf"job {job_id}: segment \d \(frames \d+-\d+\) on cpu:\d+ interrupted (?:in node \d+ "
                             rf"\w+(?: \(step \d+ of \d+\))?, )?\d+% done; ComfyUI prompt \S+ was cancelled", log)
    assert interrupted, log[-3000:]
    assert f"job {job_id} cancelled\n" in log and f"job {job_id} failed" not in log
    assert not (tmp_path / "never.mp4").exists()
    assert local_api.leftover_job_files() == []

    speech = make_tone(tmp_path / "next.wav", 2.0)
    image = make_image(tmp_path / "next.png")
    result = run_client("submit", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "--width", "64", "--height", "64", "-o", str(tmp_path / "next.mp4"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert frame_count(tmp_path / "next.mp4") == 50


def test_a_big_input_goes_through_the_bucket(local_api, s3_server, tmp_path):  # noqa: F811
    video = make_mp4(tmp_path / "big.mp4", 1, size="640x360", noisy=True, crf=0)
    assert video.stat().st_size > 10 * MB  # more than RunPod's /run takes
    speech = make_tone(tmp_path / "speech.wav", 1.0)
    env = client_env(BUCKET_ENDPOINT_URL=f"{s3_server}/{BUCKET}", BUCKET_ACCESS_KEY_ID=ACCESS_KEY,
                     BUCKET_SECRET_ACCESS_KEY=SECRET_KEY, BUCKET_INPUT_PREFIX="uploads/in")
    out = tmp_path / "out.mp4"
    result = run_client("submit", "--url", local_api.url, "--video", str(video), "--audio", str(speech),
                        "--width", "128", "--height", "64", "-o", str(out), "--quiet", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"video: {video} ({video.stat().st_size / 1e6:.2f} MB) uploaded to the bucket" in result.stderr
    assert f"audio: {speech}" in result.stderr and "inline" in result.stderr
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY)
    uploaded = [o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="uploads/in/")["Contents"]]
    assert [o["Size"] for o in uploaded] == [video.stat().st_size] and uploaded[0]["Key"].endswith("-big.mp4")
    assert frame_count(out) == 25
    assert SECRET_KEY not in result.stdout + result.stderr


def test_big_input_without_a_bucket_is_refused_before_sending_with_the_fix(tmp_path):
    video = tmp_path / "big.mp4"
    video.write_bytes(b"\0" * (8 * MB))  # 10.7 MB as base64
    result = run_client("submit", "--url", "http://127.0.0.1:9", "--video", str(video), "--audio",
                        str(make_tone(tmp_path / "a.wav", 1.0)))
    assert result.returncode == 2
    assert "video: big.mp4 (8.0 MB, 10.7 MB as base64) does not fit in the request body" in result.stderr
    assert "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY" in result.stderr


def test_the_workers_error_is_shown_as_the_worker_wrote_it(local_api):
    image = make_image(local_api.media / "face.png")
    speech = make_tone(local_api.media / "speech.wav", 1.0)
    expected = local_api.runsync({"image": str(image), "audio": str(speech), "width": 500})["error"]
    assert "width" in expected  # the worker's own words, whatever they are
    result = run_client("submit", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "--width", "500", "--quiet")
    assert result.returncode == 1
    assert expected in result.stderr.splitlines()


def test_estimate_prints_the_workers_dry_run(local_api, tmp_path):
    image = make_image(local_api.media / "est.png")
    speech = make_tone(local_api.media / "est.wav", 7.0)
    dry = local_api.runsync({"image": str(image), "audio": str(speech), "width": 128, "height": 96,
                             "dry_run": True})
    assert dry["status"] == "COMPLETED", dry
    plan = dry["output"]
    result = run_client("estimate", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "--width", "128", "--height", "96")
    assert result.returncode == 0, result.stderr
    assert f"workflow {plan['workflow']}: {plan['frames']} frames" in result.stdout
    for s in plan["segments"]:
        assert f"segment {s['index']}: frames {s['start_frame']}-{s['end_frame']} ({s['frames']} frames" in result.stdout
    estimate = plan["estimate"]
    assert plan["instance_names"] and all(name.startswith("cpu:") for name in plan["instance_names"])
    assert f"{plan['frames']} frames at 25 fps, " not in result.stdout  # fps as a number: 25, not 25.0
    assert f"estimate: {estimate['seconds_per_window']:.3g} s a frame ({estimate['basis']})" in result.stdout
    for option in estimate["per_gpu_count"]:
        count = option["gpus"]
        assert f"  on {count} instance{'s' if count > 1 else ''}" in result.stdout
    assert "  generation only, instances warm: preparing, stitching and delivering the video come on top" in result.stdout
    assert "None" not in result.stdout and "window" not in result.stdout and "GPU" not in result.stdout
    assert "_s:" not in result.stdout  # no raw field names
    assert local_api.leftover_job_files() == []


def test_status_and_cancel_of_jobs_the_worker_does_not_know(local_api):
    result = run_client("status", "no-such-job", "--url", local_api.url)
    assert result.returncode == 1 and "no job 'no-such-job'" in result.stderr
    result = run_client("cancel", "no-such-job", "--url", local_api.url)
    assert result.returncode == 1 and "HTTP 404" in result.stderr and "no-such-job" in result.stderr


def test_without_a_target_the_client_says_how_to_give_one(tmp_path):
    result = run_client("submit", "--image", "x.png")
    assert result.returncode == 2 and "--endpoint ENDPOINT_ID" in result.stderr and "--url" in result.stderr
    result = run_client("submit", "--endpoint", "abc123", "--image", "x.png")
    assert result.returncode == 1 and "RUNPOD_API_KEY is not set" in result.stderr


def test_a_refused_request_shows_the_whole_rule_and_no_progress_bar(local_api, tmp_path):
    image, speech = make_image(tmp_path / "face.png"), make_tone(tmp_path / "speech.wav", 1.0)
    result = run_client("submit", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "--width", "7")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [f"job {result.stderr.split('job ')[1].split()[0]} FAILED:",
                                               "width: 64-2048, a multiple of 16 (got 7)"]
    assert not any(line.startswith("[") for line in result.stdout.splitlines()), result.stdout
    result = run_client("submit", "--url", local_api.url, "--image", str(image), "--audio", str(speech),
                        "--set", "widht=512", "--quiet")
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == "widht: unknown field; did you mean `width`?"


def test_the_client_checks_what_it_can_before_sending(tmp_path):
    nowhere = "http://127.0.0.1:9"  # nothing listens: any request would fail differently
    image = make_image(tmp_path / "face.png")
    result = run_client("submit", "--url", nowhere, "--image", str(image))
    assert result.returncode == 2 and result.stderr == (
        "error: --audio: required (the speech; the video lasts as long as it): a local file or an http(s) URL\n")
    result = run_client("submit", "--url", nowhere, "--audio", str(make_tone(tmp_path / "a.wav", 1.0)))
    assert result.returncode == 2 and result.stderr == (
        "error: --image or --video: required (the reference picture, or the video to restyle)\n")
    result = run_client("submit", "--url", nowhere, "--image", str(tmp_path / "nope.png"), "--audio", "speech.wav")
    assert result.returncode == 2 and result.stderr == (
        f"error: --image: no file at {tmp_path / 'nope.png'} (give a local file or an http(s) URL)\n")
    assert result.stdout == ""
