"""What a person reads in the worker's log, from `make run`'s local test mode (`python handler.py`, the SDK
running one job) and the local API: each thing once, in the words the client uses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import shifted_port
from media_samples.factory import make_image, make_tone

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.comfy  # handler.py --test_input starts its own two CPU ComfyUI instances
def test_the_local_test_mode_logs_the_summary_once_and_no_result_dump(tmp_path):
    image, speech = make_image(tmp_path / "face.png", 96, 96), make_tone(tmp_path / "speech.wav", 3.0)
    job = {"input": {"workflow": "still", "image": str(image), "audio": str(speech), "width": 128, "height": 96,
                     "output": {"destination": "volume"}}}
    env = dict(os.environ, COMFY_BASE_PORT=str(shifted_port(8440)), COMFY_CPU_INSTANCES="2", COMFY_FORCE_CPU="1",
               COMFY_INSTANCES_DIR=str(tmp_path / "instances"), ALLOWED_INPUT_ROOTS=str(tmp_path),
               JOB_WORK_DIR=str(tmp_path / "jobs"), OUTPUT_VOLUME_DIR=str(tmp_path / "volume"),
               RUNPOD_DEBUG_LEVEL="INFO")  # as the Makefile sets it
    result = subprocess.run([sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    video = tmp_path / "volume" / "local_test.mp4"
    assert "workflow still: 75 frames at 25 fps (3.00 s), 2 segments on 2 of 2 instances, overlap 4 frames\n" in log
    assert f"  video: {video} ({video.stat().st_size / 1e6:.2f} MB, on the worker's volume)\n" in log
    assert "Job result" not in log and "{'output'" not in log and "'video_path'" not in log  # no dump at INFO
    assert len(re.findall(r"\bplan: ", log)) == 1, log
    assert re.search(r"plan: 75 frames in 2 segment\(s\) on 2 instance\(s\)", log)
    names = set(re.findall(r"\b(cpu:\d+|CPU:\d+)", log))
    assert names and all(name.startswith("cpu:") for name in names), names  # one spelling: ComfyInstance.name


def test_the_local_apis_front_page_works_offline(worker):
    page = requests.get(worker.url + "/", timeout=10)
    assert page.ok and "<script" not in page.text and "https:" not in page.text  # nothing from the internet
    for route in ("/run", "/runsync", "/progress/{job_id}", "/cancel/{job_id}"):
        assert f"<code>{route}</code>" in page.text, route
    assert "<a href='/docs'>/docs</a> is the interactive page" in page.text
    assert requests.get(worker.url + "/docs", timeout=10).ok  # the SDK's Swagger UI, moved there


def test_the_readmes_first_screen_says_what_the_sample_output_looks_like_on_a_cpu():
    readme = (REPO / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:40])
    for words in ("a test pattern, not a talking head", "`restyle`", "`still`", "a frozen image",
                  "InfiniteTalk templates, which need a GPU", "![A frame of the sample job's video"):
        assert words in first_screen, words
    picture = REPO / re.search(r"\]\((docs/[^)]+\.png)\)", first_screen).group(1)
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 256  # a 256-wide PNG frame
