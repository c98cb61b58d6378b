"""The container image, built from this repository and run for real (no Docker engine needed).

The Dockerfile is built unchanged by scripts/build_image.sh, the script `make image` runs, with buildah
(daemonless, as root, `--isolation chroot`), then the image's own start command runs in it on the CPU:
the RunPod SDK's local test mode with the image's test_input.json, two CPU ComfyUI instances, ffmpeg.
The tests check the job's video, what the image promises (both environments at the locked versions,
ComfyUI-WanVideoWrapper at its pinned commit, ffmpeg, the models check) and that a code change reuses
every environment layer.

The base: a plain Debian 12 root file system that mmdebstrap makes from Debian's archive
(scripts/debian_base_image.sh; Docker Hub and NVIDIA's registry are out of reach here and in CI), built
with `--build-arg BASE_IMAGE=localhost/debian-base:bookworm BAKE_MODELS=0`. Debian 12's python3 is 3.11,
the Python the rest of this suite runs on, so the image's venvs get the very wheels the other tests ran
against, and torch's ~3 GB of CUDA wheels come from this machine's local wheel store (mounted into the
build by build_image.sh) instead of PyPI in every CI run. The production base (CUDA on Ubuntu 24.04)
has Python 3.12: test_dockerfile.py checks that both locks resolve to wheels for it. Same Dockerfile, same
locks, same install scripts; only the base and the Python minor version differ.

Needs root, buildah and mmdebstrap (`sudo bash scripts/install_image_tools.sh`, Debian/Ubuntu). Where
they are missing the tests skip and say so, except in CI (CI=true), where that is a failure.
The first build takes 10-12 min; later runs reuse the cached layers and take ~1.5 min (README,
"Container image").
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from media_samples.factory import frame_count, media_duration
from tests.conftest import shifted_port
from local_platform.runpod_standin import RunPodStandIn

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/infinitetalk-worker:image-test"
BASE_SUITE = "bookworm"
BUILD_TIMEOUT_S = 3600
COMFY_HOME = "/comfyui"
WRAPPER = "ComfyUI-WanVideoWrapper"


def missing_tools() -> list[str]:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


_missing = missing_tools()
if _missing:
    _why = (f"the image test needs {', '.join(_missing)}: run it as root on Debian/Ubuntu after "
            "`bash scripts/install_image_tools.sh` (installs buildah and mmdebstrap), then "
            "`.venv/bin/python -m pytest tests/test_image.py` (or `make test-image`, which does both)")
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the image test: {_why}")  # a collection error fails the run
    pytestmark = pytest.mark.skip(reason=_why)


def storage_flags() -> list[str]:
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build_image.sh"), "--storage-flags"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def buildah(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


STORAGE = storage_flags() if not _missing else []


def custom_nodes_archives() -> str:
    """The offline source of the custom nodes (as the Makefile sets it); empty: clone from GitHub."""
    if os.environ.get("CUSTOM_NODES_ARCHIVES"):
        return os.environ["CUSTOM_NODES_ARCHIVES"]
    shared = REPO_ROOT.parent / "shared" / "custom_nodes"
    return str(shared) if any(shared.glob("*.tar.gz")) else ""


def build(context: Path, image: str) -> subprocess.CompletedProcess:
    base = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "debian_base_image.sh"), BASE_SUITE],
                          capture_output=True, text=True, timeout=600)
    assert base.returncode == 0, base.stdout + base.stderr
    env = dict(os.environ, IMAGE=image, IMAGE_BUILDER="buildah", BAKE_MODELS="0",
               BASE_IMAGE=base.stdout.split()[-1], CUSTOM_NODES_ARCHIVES=custom_nodes_archives(),
               BUILDAH_STORAGE_FLAGS=" ".join(STORAGE))
    result = subprocess.run(["bash", str(context / "scripts" / "build_image.sh")], cwd=context, env=env,
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"image build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def image() -> str:
    build(REPO_ROOT, IMAGE)
    # The previous build's code layers are now untagged: dropped, so that storage does not grow with each
    # run. The environment layers stay (they are the new image's too): the next build starts from them.
    buildah("rmi", "--prune", check=False)
    return IMAGE


def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]


class Container:
    """A working container of the image; `run` runs a command in it (buildah run, chroot isolation).

    Each container has its own folder on the host, mounted at /runpod-volume (the network volume's path),
    and its ComfyUI instances put their folders under it (COMFY_INSTANCES_DIR), so their logs can be read
    and any process left behind found by that variable and ended.
    """

    def __init__(self, image: str, host_dir: Path):
        self.name = f"image-test-{uuid.uuid4().hex[:12]}"
        self.volume = host_dir / "runpod-volume"
        self.volume.mkdir(parents=True)
        self.instances = f"/runpod-volume/instances-{self.name}"
        buildah("from", "--name", self.name, "--pull=false", image)

    def run(self, command: list[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        env_args = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        try:
            return buildah("run", "--isolation", "chroot", "--volume", f"{self.volume}:/runpod-volume",
                           *env_args, self.name, "--", *command, timeout=timeout, check=False)
        finally:
            self.end_leftover_processes()

    def end_leftover_processes(self) -> None:
        """The worker and its ComfyUI instances, should any outlive `buildah run` (a timeout, os._exit)."""
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("COMFY_INSTANCES_DIR") == self.instances:
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass

    def remove(self) -> None:
        self.end_leftover_processes()
        buildah("rm", self.name, check=False)


@pytest.fixture()
def container(image, tmp_path):
    box = Container(image, tmp_path)
    yield box
    box.remove()


def comfy_env(container: Container, base_port: int) -> dict[str, str]:
    """CPU ComfyUI instances on the test's own ports, their folders where the test can read them."""
    return {"COMFY_FORCE_CPU": "1", "COMFY_CPU_INSTANCES": "2", "COMFY_BASE_PORT": str(base_port),
            "COMFY_INSTANCES_DIR": container.instances}


def lock_versions(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions(container: Container, python: str) -> dict[str, str]:
    result = container.run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    assert result.returncode == 0, result.stderr
    return {normalize(p["name"]): p["version"] for p in json.loads(result.stdout)}


# ---------------------------------------------------------------------------------------------- the job


def test_image_start_command_runs_the_sample_job_on_cpu(image, container, tmp_path):
    """The image's own CMD, unchanged, in RunPod's local test mode: test_input.json in, a video out; with
    the environment of docker-compose.yml's CPU service (`docker compose --profile cpu up`)."""
    command = image_config(image)["Cmd"]
    assert command == ["python", "-u", "handler.py"]
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["worker-cpu"]
    assert "command" not in service and "./runpod-volume:/runpod-volume" in service["volumes"]
    env = dict(service["environment"], **comfy_env(container, shifted_port(8650)))
    result = container.run(command, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    # The worker's summary (client/report.py), not the SDK's dump of the whole result
    assert "job local_test done\nworkflow restyle: " in log and "Job result" not in log, log[-6000:]

    job = json.loads((REPO_ROOT / "test_input.json").read_text())["input"]
    audio = tmp_path / "audio.m4a"
    audio.write_bytes(base64.b64decode(job["audio"].split(",", 1)[1]))
    seconds = media_duration(audio, "a")
    expected = math.ceil(seconds * job["fps"])
    video = container.volume / "outputs" / "local_test.mp4"  # OUTPUT_VOLUME_DIR=/runpod-volume/outputs
    assert video.is_file(), log[-6000:]
    assert frame_count(video) == expected
    assert abs(media_duration(video, "a") - seconds) < 0.05
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(video)],
                                      capture_output=True, text=True, check=True).stdout)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"], streams["video"]["height"]) == \
        ("h264", job["width"], job["height"])
    assert streams["audio"]["codec_name"] == "aac"
    # both instances took a segment (the summary's first line: client/report.py)
    assert re.search(rf"workflow restyle: {expected} frames at .*, 2 segments on 2 of 2 instances", log), log[-6000:]

    # Both ComfyUI instances loaded the wrapper and the worker's own nodes without an import failure.
    for index in (0, 1):
        comfy_log = (container.volume / container.instances.removeprefix("/runpod-volume/") /
                     f"instance-{index}" / "comfyui.log").read_text()
        imports = comfy_log[comfy_log.index("Import times for custom nodes"):]
        assert re.search(rf"seconds: \S*/custom_nodes/{WRAPPER}\n", imports), imports[:2000]
        assert re.search(r"seconds: \S*/custom_nodes/runpod_worker_nodes\n", imports), imports[:2000]
        assert "IMPORT FAILED" not in imports, imports[:2000]


def test_image_answers_every_job_with_the_missing_models_by_default(image, container):
    """As on RunPod, with the image's REQUIRE_MODELS=1 and no models: the worker takes its jobs from the platform
    (local_platform/runpod_standin.py on this host: `buildah run --isolation chroot` shares its network) and
    answers each with every missing file, where it looked and the fix, and refresh_worker (the SDK's stopPod),
    instead of exiting into a restart loop (worker/api/startup.py)."""
    assert "REQUIRE_MODELS=1" in image_config(image)["Env"]
    from worker.templates.model_files import model_files

    required = model_files()
    assert required
    standin = RunPodStandIn()
    env = dict(comfy_env(container, shifted_port(8660)), **standin.worker_env(), RUNPOD_SKIP_GPU_CHECK="true",
               RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true")
    ran: dict[str, subprocess.CompletedProcess] = {}
    worker = threading.Thread(target=lambda: ran.update(result=container.run(image_config(image)["Cmd"], env=env,
                                                                               timeout=600)))
    worker.start()
    try:
        job = standin.wait_final(standin.submit({"workflow": "infinitetalk_image_single"}).id, 300)
    finally:
        container.end_leftover_processes()  # the worker serves on: ended here
        worker.join(timeout=120)
        standin.close()
    log = ran["result"].stdout + ran["result"].stderr if "result" in ran else ""
    assert job.status == "FAILED" and job.stop_pod, (job.status, log[-6000:])
    error = job.error
    assert error.startswith(f"the worker cannot serve: {len(required)} required model file(s) missing: "), error
    for model in required:
        assert f"{model.file} (folder {model.folder};" in error
        # where ComfyUI in the image looks: its own models/, the network volume, the baked /models
        assert (f"looked in {COMFY_HOME}/ComfyUI/models/{model.folder}, /runpod-volume/models/{model.folder}, "
                f"/models/{model.folder})") in error
    assert "Fix: run scripts/download_models.sh" in error
    assert "the worker cannot serve: " in log and "Traceback" not in log


# ---------------------------------------------------------------------------------------------- contents


def test_image_environments_are_the_locked_versions(container):
    comfy = installed_versions(container, f"{COMFY_HOME}/venv/bin/python")
    comfy.pop("pip", None)
    assert comfy == lock_versions(REPO_ROOT / "requirements" / "comfyui.lock")

    worker = installed_versions(container, "/worker/.venv/bin/python")
    worker.pop("pip", None)
    locked = lock_versions(REPO_ROOT / "requirements" / "worker.lock")
    if "setuptools" not in locked:
        worker.pop("setuptools", None)  # what `python3 -m venv` seeds on Python <= 3.11 (3.12 seeds only pip)
    assert {name: (version, locked.get(name)) for name, version in worker.items() if locked.get(name) != version} == {}
    direct = lock_versions(REPO_ROOT / "requirements" / "worker.txt")
    assert {name: worker.get(name) for name in direct} == direct
    dev_only = set(lock_versions(REPO_ROOT / "requirements" / "dev.txt"))
    assert not dev_only & set(worker), "the image's worker venv has no test tools (WORKER_DEV=0)"


def test_image_has_ffmpeg_comfyui_and_the_pinned_wrapper(container):
    manifest = json.loads((REPO_ROOT / "models" / "manifest.json").read_text())
    pinned = {node["name"]: node["commit"] for node in manifest["custom_nodes"]}
    assert WRAPPER in pinned
    script = "; ".join([
        "set -e",
        "ffmpeg -hide_banner -version | head -1",
        "ffprobe -hide_banner -version | head -1",
        f"cat {COMFY_HOME}/ComfyUI/comfyui_version.py",
        f"readlink {COMFY_HOME}/ComfyUI/custom_nodes/runpod_worker_nodes",
        f"cat {COMFY_HOME}/ComfyUI/extra_model_paths.yaml | grep base_path",
    ] + [f"echo {name}=$(cat {COMFY_HOME}/ComfyUI/custom_nodes/{name}/.installed-commit 2>/dev/null "
         f"|| git -C {COMFY_HOME}/ComfyUI/custom_nodes/{name} rev-parse HEAD)" for name in pinned])
    result = container.run(["bash", "-c", script])
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^ffmpeg version \S+", out, re.MULTILINE) and re.search(r"^ffprobe version", out, re.MULTILINE)
    assert '__version__ = "0.3.75"' in out
    assert "/worker/comfy_nodes" in out
    assert "base_path: /runpod-volume/models" in out and "base_path: /models" in out
    for name, commit in pinned.items():
        assert f"{name}={commit}" in out


# ---------------------------------------------------------------------------------------------- layers


def test_a_code_change_reuses_every_environment_layer(image, tmp_path):
    """The repository with one changed line of code: everything before `COPY . /worker` comes from the
    cache (apt, both venvs, the custom nodes), so a code change rebuilds in seconds."""
    context = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file() and not source.is_symlink():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    handler = context / "handler.py"
    handler.write_text(handler.read_text() + "\n# a code change\n")
    changed = f"localhost/infinitetalk-worker:image-test-{uuid.uuid4().hex[:8]}"
    try:
        log = build(context, changed).stdout
    finally:
        buildah("rmi", changed, check=False)
    steps = re.split(r"^STEP \d+/\d+: ", log, flags=re.MULTILINE)[1:]
    code_step = next(i for i, step in enumerate(steps) if step.startswith("COPY . /worker"))
    for step in steps[:code_step]:
        if step.startswith(("RUN", "COPY")):
            assert "Using cache" in step, f"rebuilt after a code-only change: {step[:300]}"
    assert "Using cache" not in steps[code_step]
