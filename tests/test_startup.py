"""A worker that cannot start says why (worker/api/startup.py), against the real handler process: a bad setting, a
template that does not exist, a required model missing (REQUIRE_MODELS=1), too little VRAM for every device row
of the templates it serves, no ComfyUI coming up. Each cause is one log line naming the setting or file and the
fix; the worker does not crash: on RunPod (the SDK's queue mode, under local_platform/runpod_standin.py) it answers
every job it takes with the causes and refresh_worker (the SDK sends stopPod), and the local API
(`--rp_serve_api`) and the local test mode (`make run`) answer the same. None of these starts a ComfyUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comfy_manager.gpus import GpuInfo
from tests.conftest import shifted_port
from local_platform.runpod_standin import RunPodStandIn
from tests.support.tiers import STAND_IN_ENV
from local_platform.workers import REPO, WorkerApi, WorkerOnPlatform
from worker.api import startup as startup_module
from worker.request.settings import WorkerSettings

INFINITETALK = ("image/single=infinitetalk_image_single,image/multi=infinitetalk_image_multi,"
                "video/single=infinitetalk_video_single,video/multi=infinitetalk_video_multi")
JOB = {"workflow": "still", "image": "/nowhere.png", "audio": "/nowhere.wav"}


def cause_lines(log: str, cause: str, others: tuple[str, ...] = ()) -> list[str]:
    """The log lines that state `cause` on its own: not the job answers, which join every cause."""
    return [line for line in log.splitlines() if cause in line and not any(other in line for other in others)]


@pytest.fixture()
def platform():
    standin = RunPodStandIn()
    yield standin
    standin.close()


def on_platform(standin: RunPodStandIn, root: Path, env: dict) -> WorkerOnPlatform:
    return WorkerOnPlatform(root, api_port=0, comfy_port=shifted_port(8440),
                            env={**standin.worker_env(), **env}).start(standin, timeout_s=120)


def answered(standin: RunPodStandIn, worker: WorkerOnPlatform, count: int = 2) -> list[str]:
    """Submits `count` jobs; each must fail with stopPod; returns their errors."""
    errors = []
    for _ in range(count):
        job = standin.wait_final(standin.submit(JOB).id, 60)
        assert job.status == "FAILED", (job.status, job.output, worker.log_tail())
        assert job.stop_pod  # refresh_worker: RunPod replaces the worker after the job
        errors.append(job.error)
    assert worker.process.poll() is None, worker.log_tail()  # still serving: no crash, no restart loop
    assert worker.comfy_processes() == []
    return errors


def test_bad_settings_are_answered_to_every_job_on_runpod(platform, tmp_path):
    worker = on_platform(platform, tmp_path, {"MAX_CONCURRENT_JOBS": "two", "COMFY_BASE_PORT": "x"})
    try:
        errors = answered(platform, worker)
        log = worker.log_tail(100_000)
    finally:
        worker.stop()
    assert errors[0] == errors[1]
    assert errors[0].startswith("the worker cannot serve: bad setting MAX_CONCURRENT_JOBS='two': Input should be a "
                                "valid integer"), errors[0]
    assert "Fix: set MAX_CONCURRENT_JOBS as README.md's settings say, or unset it (default 1)" in errors[0]
    assert " | bad setting COMFY_BASE_PORT='x': " in errors[0] and "or unset it (default 8188)" in errors[0]
    assert len(cause_lines(log, "bad setting MAX_CONCURRENT_JOBS='two'", ("COMFY_BASE_PORT",))) == 1, log
    assert len(cause_lines(log, "bad setting COMFY_BASE_PORT='x'", ("MAX_CONCURRENT_JOBS",))) == 1, log
    assert "Traceback" not in log


def test_no_comfyui_coming_up_is_answered_to_every_job_on_runpod(platform, tmp_path):
    """Every instance exits at once (here a stand-in for a ComfyUI venv without torch): the pool's start fails
    after a retry per instance, and the jobs hear how each ended and where its log is."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'Traceback (most recent call last):'\n"
                      "echo \"ModuleNotFoundError: No module named 'torch'\"\nexit 1\n")
    python.chmod(0o755)
    worker = on_platform(platform, tmp_path, {"COMFYUI_PYTHON": str(python), STAND_IN_ENV: "1"})
    try:
        errors = answered(platform, worker, count=1)
        log = worker.log_tail(100_000)
    finally:
        worker.stop()
    port = shifted_port(8440)
    assert errors[0].startswith("the worker cannot serve: no ComfyUI instance came up: "
                                f"ComfyUI cpu:{port} exited with code 1 during start-up, its log ends "
                                "\"ModuleNotFoundError: No module named 'torch'\""), errors[0]
    assert f"instance-0/comfyui.log); ComfyUI cpu:{port + 1} exited with code 1" in errors[0]
    assert "Fix: ComfyUI's log says why; scripts/install_comfyui.sh installs ComfyUI" in errors[0]
    assert len(cause_lines(log, "cannot serve: no ComfyUI instance came up", ("Job ", "job "))) == 1, log


def fake_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"comfyui": {"version": "0.3.75"}, "custom_nodes": [], "models": [
        {"file": "wan/absent_dit.safetensors", "folder": "diffusion_models", "size_bytes": 1, "size_is_estimate": True,
         "source": {"repo": "org/dit", "path": "absent_dit.safetensors"}, "sha256": None, "used_by": ["still"],
         "optional": False, "note": ""}]}))
    return path


def test_a_missing_model_is_answered_by_the_local_api(tmp_path):
    api = WorkerApi(tmp_path, api_port=shifted_port(8043), comfy_port=shifted_port(8450),
                    env={"REQUIRE_MODELS": "1", "MODELS_MANIFEST": str(fake_manifest(tmp_path))}).start(timeout_s=120)
    try:
        answer = api.runsync(JOB, timeout_s=60)
        log = api.log_tail(100_000)
        assert api.comfy_processes() == []
    finally:
        api.stop()
    assert answer["status"] == "FAILED", answer
    assert answer["error"].startswith(
        "the worker cannot serve: 1 required model file(s) missing: wan/absent_dit.safetensors "
        "(folder diffusion_models; from org/dit/absent_dit.safetensors; looked in "), answer
    assert "/runpod-volume/models/diffusion_models, /models/diffusion_models). Fix: run scripts/download_models.sh" \
        in answer["error"]
    assert answer["error"].endswith("(REQUIRE_MODELS=1 asks for every required model)")
    assert len(cause_lines(log, "cannot serve: 1 required model file(s) missing", ("job ", "Job "))) == 1, log


FAKE_NVML = '''
"""A stand-in for pynvml: one GPU of {gb} GiB."""
class NVMLError(Exception):
    pass
class _Memory:
    total = {gb} * 1024**3
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(index): return index
def nvmlDeviceGetName(handle): return "Stand-in GPU"
def nvmlDeviceGetMemoryInfo(handle): return _Memory()
'''


def run_locally(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """`make run`'s command (handler.py in the SDK's local test mode, test_input.json as the job)."""
    return subprocess.run([sys.executable, "handler.py"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUTPUT_VOLUME_DIR": str(tmp_path / "output"),
                               "COMFY_INSTANCES_DIR": str(tmp_path / "instances"), "RUNPOD_DEBUG_LEVEL": "INFO",
                               **env})


def test_too_little_vram_for_every_device_row_is_said_by_make_run(tmp_path):
    """The InfiniteTalk templates' smallest GPU row needs 20 GB; a 16 GiB card (NVML stood in for) fits none."""
    (tmp_path / "nvml").mkdir()
    (tmp_path / "nvml" / "pynvml.py").write_text(textwrap.dedent(FAKE_NVML).format(gb=16))
    result = run_locally(tmp_path, {"PYTHONPATH": str(tmp_path / "nvml"), "DEFAULT_WORKFLOWS": INFINITETALK,
                                    "COMFY_FORCE_CPU": "0", "COMFY_BASE_PORT": str(shifted_port(8460))})
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-4000:]
    expected = ("too little VRAM: the templates this worker serves (DEFAULT_WORKFLOWS: infinitetalk_image_multi, "
                "infinitetalk_image_single, infinitetalk_video_multi, infinitetalk_video_single) have device rows "
                "['cpu', 'gpu>=20GB', 'gpu>=28GB', 'gpu>=38GB'], and its instances (GPU 0 with 16 GB; VRAM as NVML "
                "reports it, capped by COMFY_VRAM_LIMIT_GB) fit none of them. Fix: run it on a GPU with at least 20 "
                "GB of VRAM, raise or unset COMFY_VRAM_LIMIT_GB, or serve templates that fit (DEFAULT_WORKFLOWS)")
    assert f"Job local_test failed with error: the worker cannot serve: {expected}" in log, log[-4000:]
    assert len(cause_lines(log, expected, ("Job ",))) == 1, log[-4000:]
    assert "Traceback" not in log


def test_comfyui_not_installed_and_an_unknown_template_are_said_by_make_run(tmp_path):
    result = run_locally(tmp_path, {"COMFYUI_PATH": str(tmp_path / "nowhere"), "COMFY_FORCE_CPU": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-4000:]
    assert (f"Job local_test failed with error: the worker cannot serve: ComfyUI not found at {tmp_path / 'nowhere'}: "
            "run scripts/install_comfyui.sh or set COMFYUI_PATH") in log, log[-4000:]
    result = run_locally(tmp_path, {"DEFAULT_WORKFLOWS": "image/single=talking_head", "COMFY_FORCE_CPU": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-4000:]
    assert ("the worker cannot serve: bad setting DEFAULT_WORKFLOWS: it names 'talking_head', which workflows/ (and "
            "EXTRA_WORKFLOW_DIRS) do not hold. Fix: name templates of ['infinitetalk_image_multi'") in log, log[-4000:]


@pytest.mark.parametrize("gpus, limit, fits", [
    ([GpuInfo(0, "24 GB card", 23.6)], None, True),
    ([GpuInfo(0, "24 GB card", 23.6)], 16.0, False),  # COMFY_VRAM_LIMIT_GB makes it a 16 GB card
    ([GpuInfo(0, "16 GB card", 15.9), GpuInfo(1, "48 GB card", 47.5)], None, True),  # one instance fits: serve
    ([], None, True),  # CPU instances: the templates' cpu row
])
def test_the_vram_rule(monkeypatch, gpus, limit, fits):
    monkeypatch.setattr(startup_module, "discover_gpus", lambda: gpus)
    monkeypatch.setenv("DEFAULT_WORKFLOWS", INFINITETALK)
    monkeypatch.delenv("COMFY_FORCE_CPU", raising=False)
    if limit:
        monkeypatch.setenv("COMFY_VRAM_LIMIT_GB", str(limit))
    startup = startup_module.read_settings()
    startup_module.check(startup)
    assert startup.ok is fits, startup.problems


def test_a_stall_shorter_than_a_few_progress_updates_is_a_bad_setting_on_runpod(monkeypatch):
    monkeypatch.setenv("PROGRESS_INTERVAL_S", "2")
    monkeypatch.setenv("FANOUT_STALL_S", "9")
    startup = startup_module.read_settings()
    startup_module.check(startup)
    assert startup.ok, startup.problems  # outside RunPod nothing fans out: the stall is never used
    monkeypatch.setenv("RUNPOD_WEBHOOK_POST_OUTPUT", "https://api.runpod.ai/v2/endpoint/job-done/pod")
    startup = startup_module.read_settings()
    startup_module.check(startup)
    assert startup.problems == [
        "bad setting FANOUT_STALL_S=9: a job whose progress stays the same that long is taken for dead, and progress "
        "is sent every PROGRESS_INTERVAL_S (2 s). Fix: set FANOUT_STALL_S to at least 10 (the default is 120), or "
        "lower PROGRESS_INTERVAL_S"]
    monkeypatch.setenv("FANOUT_STALL_S", "10")
    startup = startup_module.read_settings()
    startup_module.check(startup)
    assert startup.ok, startup.problems


def test_a_setting_that_does_not_parse_falls_back_to_its_default(monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "many")
    monkeypatch.setenv("MAX_DURATION_S", "90")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")  # handler.py's logging.basicConfig would raise on it
    startup = startup_module.read_settings()
    assert startup.settings.max_concurrent_jobs == 1 and startup.settings.max_duration_s == 90
    assert startup.settings.log_level == "INFO"
    assert [p.split(":")[0] for p in startup.problems] == ["bad setting MAX_CONCURRENT_JOBS='many'",
                                                           "bad setting LOG_LEVEL='LOUD'"]
    assert startup.problems[1] == ("bad setting LOG_LEVEL='LOUD': not a log level: one of DEBUG, INFO, WARNING, "
                                   "ERROR, CRITICAL. Fix: set LOG_LEVEL as README.md's settings say, or unset it "
                                   "(default INFO)")
    assert startup.answer() == {"error": "the worker cannot serve: " + " | ".join(startup.problems),
                                "refresh_worker": True}
    with pytest.raises(Exception):
        WorkerSettings()  # what handler.py met at import before: a traceback
