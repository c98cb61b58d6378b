"""The model files the workflows need (models/manifest.json), where ComfyUI looks for them, and a check.

Standard library only (PyYAML is imported where needed), so scripts/download_models.py can use the manifest
at image build time from any Python.

Where a model may live: ComfyUI finds a file of folder F (diffusion_models, vae, ...) in its own
models/F and in every base_path/F that its extra_model_paths.yaml lists (models/extra_model_paths.yaml:
the network volume's /runpod-volume/models and the image's baked /models). missing_models() looks in the
same places, or in the roots it is given.

The fitness check (worker/templates/model_check.py) uses them: with REQUIRE_MODELS=1 (set in the Docker
image) a worker that lacks a required model exits at start-up, naming every missing file, instead of taking
jobs it would fail.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_PATH = REPO_ROOT / "models" / "manifest.json"
EXTRA_MODEL_PATHS = REPO_ROOT / "models" / "extra_model_paths.yaml"
VOLUME_MODELS_ROOT = Path("/runpod-volume/models")


@dataclass(frozen=True)
class ModelFile:
    file: str  # may contain a subfolder, e.g. "wan/model.safetensors"
    folder: str  # ComfyUI model folder type: diffusion_models, vae, ...
    repo: str  # Hugging Face repo id
    path: str  # path inside the repo
    size_bytes: int | None = None
    size_is_estimate: bool = False
    sha256: str | None = None
    used_by: tuple[str, ...] = ()
    optional: bool = False
    revision: str = "main"
    note: str = ""

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.file}"


def load_manifest(path: Path | None = None) -> dict:
    """The manifest at path (default: models/manifest.json; the worker reads MODELS_MANIFEST in its settings)."""
    return json.loads((path or MANIFEST_PATH).read_text())


def model_files(manifest: dict | None = None, templates: Iterable[str] | None = None,
                include_optional: bool = False) -> list[ModelFile]:
    """The manifest's models (required ones; optional too if asked), those used by `templates` if given."""
    manifest = load_manifest() if manifest is None else manifest
    wanted = None if templates is None else set(templates)
    result = []
    for entry in manifest.get("models", []):
        source = entry.get("source") or {}
        model = ModelFile(
            file=entry["file"], folder=entry["folder"], repo=source.get("repo", ""), path=source.get("path", ""),
            size_bytes=entry.get("size_bytes"), size_is_estimate=bool(entry.get("size_is_estimate", False)),
            sha256=entry.get("sha256") or None, used_by=tuple(entry.get("used_by") or ()),
            optional=bool(entry.get("optional", False)), revision=source.get("revision") or "main",
            note=entry.get("note", ""))
        if model.optional and not include_optional:
            continue
        if wanted is not None and not wanted.intersection(model.used_by):
            continue
        result.append(model)
    return result


def comfy_models_dir() -> Path:
    from comfy_manager.settings import PoolSettings  # where COMFYUI_HOME / COMFYUI_PATH put ComfyUI

    return PoolSettings().comfy_path / "models"


def extra_model_dirs(yaml_path: Path | None = None) -> dict[str, list[Path]]:
    """folder -> directories, as ComfyUI reads an extra_model_paths.yaml (base_path joined to each line)."""
    yaml_path = yaml_path or EXTRA_MODEL_PATHS
    if not yaml_path.is_file():
        return {}
    import yaml

    config = yaml.safe_load(yaml_path.read_text()) or {}
    dirs: dict[str, list[Path]] = {}
    for section in config.values():
        if not section:
            continue
        section = dict(section)
        base = section.pop("base_path", None)
        section.pop("is_default", None)
        for folder, value in section.items():
            for line in str(value).split("\n"):
                if line.strip():
                    path = Path(os.path.expandvars(os.path.expanduser(line.strip())))
                    if base and not path.is_absolute():
                        path = Path(os.path.expandvars(os.path.expanduser(base))) / path
                    elif not path.is_absolute():
                        path = yaml_path.parent / path
                    dirs.setdefault(folder, []).append(path)
    return dirs


def search_dirs(folder: str, roots: Sequence[Path] | None = None) -> list[Path]:
    """Where a file of `folder` may be: root/folder for each given root, else where ComfyUI looks."""
    if roots is not None:
        return [Path(root) / folder for root in roots]
    return [comfy_models_dir() / folder] + extra_model_dirs().get(folder, [])


def find_model(model: ModelFile, roots: Sequence[Path] | None = None) -> Path | None:
    for directory in search_dirs(model.folder, roots):
        candidate = directory / model.file
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def missing_models(models_root: Path | Sequence[Path] | None = None, templates: Iterable[str] | None = None,
                   manifest: dict | None = None) -> list[ModelFile]:
    """Required model files that are in none of the places ComfyUI would look.

    models_root: a root (or several) holding <folder>/<file>; None means ComfyUI's own models folder and
    every folder models/extra_model_paths.yaml maps. templates: only the models these workflows use.
    """
    roots = [models_root] if isinstance(models_root, (str, Path)) else models_root
    return [m for m in model_files(manifest, templates) if find_model(m, roots) is None]


def missing_message(missing: Sequence[ModelFile], roots: Sequence[Path] | None = None, one_line: bool = False) -> str:
    """Each missing file, where it comes from and where ComfyUI looked, then the fix; one_line: the same on one
    line (the worker's start-up report)."""
    items = [f"{model.file} (folder {model.folder}; from {model.repo}/{model.path}; looked in "
             f"{', '.join(str(d) for d in search_dirs(model.folder, roots))})" for model in missing]
    head = f"{len(missing)} required model file(s) missing:"
    fix = ("Fix: run scripts/download_models.sh (downloads every required model to "
           f"{VOLUME_MODELS_ROOT}; MODELS_ROOT=dir for another place), or attach the network volume "
           f"that holds them under {VOLUME_MODELS_ROOT}/<folder>/<file>, or build the image with "
           "--build-arg BAKE_MODELS=1.")
    if one_line:
        return f"{head} {'; '.join(items)}. {fix}"
    return "\n".join([head, *(f"  - {item}" for item in items), fix])
