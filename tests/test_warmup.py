"""The optional warm-up (WARMUP_SIZE=WIDTHxHEIGHT, worker/api/warmup.py), on the real worker: every instance runs one
short job before the worker takes work, and the worker then serves as usual."""

from __future__ import annotations

import re

import pytest

from local_platform.workers import WorkerApi
from media_samples.factory import make_image, make_tone
from tests.conftest import shifted_port

pytestmark = pytest.mark.comfy  # a worker with its own ComfyUI instances


def test_each_instance_runs_one_job_before_the_worker_takes_work(tmp_path):
    api = WorkerApi(tmp_path / "worker", api_port=shifted_port(8061), comfy_port=shifted_port(8470), instances=2,
                    env={"WARMUP_SIZE": "128x128"})
    try:
        api.start()
        log = api.log_tail(100_000)
        line = re.search(r"warm-up: (\d) of (\d) instance\(s\) ran (\d+) frames of 'still' at 128x128 in", log)
        assert line and line.group(1) == line.group(2) == "2", log[-3000:]
        for instance in sorted(api.instances_dir.glob("*/comfyui.log")):  # each ran a prompt before any job
            assert "Prompt executed" in instance.read_text(errors="replace"), instance
        image, audio = make_image(api.media / "face.png"), make_tone(api.media / "speech.wav", 2.0)
        answer = api.runsync({"workflow": "still", "image": str(image), "audio": str(audio), "width": 128,
                              "height": 128})
        assert answer["status"] == "COMPLETED" and answer["output"]["frames"] == 50
        assert api.leftover_job_files() == []  # the warm-up's job folders are gone too
    finally:
        api.stop()


def test_a_bad_warmup_size_is_named_at_start_up(tmp_path):
    api = WorkerApi(tmp_path / "worker", api_port=shifted_port(8062), comfy_port=shifted_port(8480), instances=1,
                    env={"WARMUP_SIZE": "big"})
    try:
        api.start()
        assert "bad setting WARMUP_SIZE='big'" in api.log_tail(100_000)
    finally:
        api.stop()
