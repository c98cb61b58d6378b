"""The installed environments are exactly what the locks say: upstream drift (a newer transformers, a
custom node's requirements moving a pin) is the first thing that breaks a ComfyUI deployment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_manager import PoolSettings

REPO = Path(__file__).resolve().parent.parent


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[normalize(name)] = version.strip()
    return pins


def installed(python: str) -> dict[str, str]:
    script = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True, timeout=60).stdout
    return {normalize(name): version for name, version in json.loads(out).items()}


def drift(lock: Path, python: str) -> list[str]:
    have = installed(python)
    return [f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
            for name, version in sorted(locked(lock).items()) if have.get(name) != version]


@pytest.mark.parametrize("lock, python", [
    ("comfyui.lock", PoolSettings.from_env().python),
    ("worker.lock", sys.executable),
], ids=["comfyui", "worker"])
def test_installed_environment_matches_its_lock(lock, python):
    problems = drift(REPO / "requirements" / lock, python)
    assert not problems, f"{python} has drifted from requirements/{lock}:\n  " + "\n  ".join(problems)


def test_direct_requirements_are_pinned_to_the_locked_versions():
    for direct, lock in (("comfyui.txt", "comfyui.lock"), ("worker.txt", "worker.lock")):
        pins = locked(REPO / "requirements" / lock)
        for name, version in locked(REPO / "requirements" / direct).items():
            assert pins.get(name) == version, f"requirements/{direct} pins {name}=={version}, {lock} has {pins.get(name)}"


def test_the_wrapper_runs_on_transformers_4():
    """transformers 5.x leaves wav2vec2's hidden_states empty and every InfiniteTalk job fails."""
    assert locked(REPO / "requirements" / "comfyui.lock")["transformers"].startswith("4.")


def test_drift_is_reported_by_name(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("pytest==0.0.1\n# a comment\nsurely-not-installed-package==1.0\n")
    assert drift(lock, sys.executable) == [
        f"pytest: locked 0.0.1, installed {installed(sys.executable)['pytest']}",
        "surely-not-installed-package: locked 1.0, installed nothing"]
