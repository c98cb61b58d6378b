"""scripts/install_custom_nodes.sh without GitHub: the trees come from CUSTOM_NODES_ARCHIVES
(<name>-<commit>.tar.gz), with the same pin checks, the same requirements install under the whole lock,
and the same idempotence as a clone."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL_NODES = REPO / "scripts" / "install_custom_nodes.sh"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_archive(folder: Path, name: str, commit: str, top: str | None = None) -> Path:
    tree = folder / "tree" / (top or name)
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (tree / "requirements.txt").write_text("pyloudnorm\n")
    archive = folder / "archives" / f"{name}-{commit}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=top or name)
    return archive


def run_installer(tmp_path: Path, archives: Path, *args: str) -> subprocess.CompletedProcess:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"custom_nodes": [{"name": "NodePack", "repo": "someone/NodePack",
                                                      "commit": COMMIT}]}))
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip.log"}\n')
    fake_python.chmod(0o755)
    env = dict(os.environ, COMFYUI_HOME=str(tmp_path / "comfy"), COMFYUI_PYTHON=str(fake_python),
               MODELS_MANIFEST=str(manifest), CUSTOM_NODES_ARCHIVES=str(archives),
               GITHUB_URL="http://127.0.0.1:9/unreachable")
    return subprocess.run(["bash", str(INSTALL_NODES), *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_node_is_unpacked_from_its_archive_and_its_requirements_installed_under_the_lock(tmp_path):
    archive = make_archive(tmp_path, "NodePack", COMMIT)
    first = run_installer(tmp_path, archive.parent)
    assert first.returncode == 0, first.stdout + first.stderr
    dest = tmp_path / "comfy" / "ComfyUI" / "custom_nodes" / "NodePack"
    assert (dest / "__init__.py").read_text() == "NODE_CLASS_MAPPINGS = {}\n"
    assert (dest / ".installed-commit").read_text().strip() == COMMIT
    assert not (dest.parent / "NodePack.unpacking").exists()
    call = (tmp_path / "pip.log").read_text().split()
    assert f"{dest}/requirements.txt" in call and call[call.index("-c") + 1] == "requirements/comfyui.lock"

    assert first.stdout.splitlines() == [f"unpacking {archive} into {dest}",
                                         f"installing NodePack's requirements into {tmp_path / 'python'}",
                                         f"1 custom node(s) ready in {dest.parent}"]

    # Nothing changed: nothing is installed again, and nothing is said.
    again = run_installer(tmp_path, archive.parent)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 1
    # A changed requirements file is installed again.
    (dest / "requirements.txt").write_text("pyloudnorm\nnumpy\n")
    third = run_installer(tmp_path, archive.parent)
    assert third.stdout.startswith("installing NodePack's requirements")
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 2


def test_dry_run_names_the_archive(tmp_path):
    archive = make_archive(tmp_path, "NodePack", COMMIT)
    result = run_installer(tmp_path, archive.parent, "--dry-run")
    assert result.returncode == 0 and f"would unpack {archive} into " in result.stdout
    assert not (tmp_path / "comfy").exists()


def test_a_missing_archive_is_an_error_naming_it(tmp_path):
    make_archive(tmp_path, "NodePack", "f" * 40)  # another commit than the manifest pins
    result = run_installer(tmp_path, tmp_path / "archives")
    assert result.returncode != 0
    assert f"NodePack: no {tmp_path / 'archives'}/NodePack-{COMMIT}.tar.gz" in result.stderr
    assert not (tmp_path / "comfy" / "ComfyUI" / "custom_nodes" / "NodePack").exists()


def test_an_archive_without_the_node_folder_is_refused(tmp_path):
    archive = make_archive(tmp_path, "NodePack", COMMIT, top="SomethingElse")
    result = run_installer(tmp_path, archive.parent)
    assert result.returncode != 0 and "has no top folder NodePack/" in result.stderr
