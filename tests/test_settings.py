"""The settings classes against the README's table of environment variables (a public contract: the same
names, the same defaults), and how each kind of variable is read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfy_manager import PoolSettings
from comfy_manager.settings import REPO_ROOT
from worker.request.settings import MB, WorkerSettings

SETTINGS = (WorkerSettings, PoolSettings)
SET_BY_RUNPOD = {"RUNPOD_WEBHOOK_POST_OUTPUT"}  # read, but no one configures it
SCRIPT_ONLY = {"MODELS_ROOT": REPO_ROOT / "scripts" / "download_models.py"}  # read by a script, not the worker


def readme_table() -> dict[str, str]:
    """variable -> default, from README.md's "Environment variables" table (a row may list several)."""
    text = (REPO_ROOT / "README.md").read_text()
    table = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        rows.update(zip(names, defaults if len(defaults) == len(names) else [cells[1]] * len(names)))
        # "(also `BUCKET_NAME`, ...: docs/DEPLOY.md)": named here, their defaults documented there.
        for also in re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", cells[2]):
            rows.setdefault(also, None)
    return rows


def declared() -> dict[str, tuple[type, str]]:
    """variable -> (settings class, field name), for every field of every settings class."""
    return {field.validation_alias: (cls, name) for cls in SETTINGS for name, field in cls.model_fields.items()}


def as_readme_shows(cls: type, name: str) -> str:
    """A field's default written as the README's table writes defaults."""
    field = cls.model_fields[name]
    if field.default_factory is not None:
        return "derived"
    value = field.default
    if value is None or value in ((), []):
        return "none"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, Path):
        return f"`{value.relative_to(REPO_ROOT) if value.is_relative_to(REPO_ROOT) else value}`"
    if isinstance(value, tuple):
        return ":".join(f"`{item}`" for item in value)
    if isinstance(value, dict):
        return "`" + ",".join(f"{key}={item}" for key, item in value.items()) + "`"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_variable_read_is_in_the_readme_and_every_documented_one_is_read():
    documented, read = readme_table(), declared()
    assert set(read) - SET_BY_RUNPOD <= set(documented), "read but not documented"
    assert set(documented) - set(SCRIPT_ONLY) <= set(read), "documented but not read"
    for variable, script in SCRIPT_ONLY.items():
        assert f'"{variable}"' in script.read_text()


def test_defaults_are_the_readme_ones():
    documented = readme_table()
    unset = {"", "all", "unset", "`auto`"}
    for variable, (cls, name) in declared().items():
        shown = documented.get(variable)
        if shown is None:  # documented in docs/DEPLOY.md, or set by RunPod
            continue
        shown = re.sub(r"\s*\(.*\)$", "", shown)  # "0 (1 in the image)"
        ours = as_readme_shows(cls, name)
        if ours == "none":
            assert shown in unset, (variable, shown)
        elif ours == "derived":
            assert shown.startswith("`$COMFYUI_HOME/"), (variable, shown)
        else:
            assert ours == shown, (variable, ours, shown)


def test_each_kind_of_variable_is_read(monkeypatch, tmp_path):
    for variable, value in {"ALLOWED_INPUT_ROOTS": f"{tmp_path}/a:{tmp_path}/b", "MAX_INPUT_MB": "2.5",
                            "ALLOW_PRIVATE_URLS": "1", "STITCH_LEAD": "0.25", "BUCKET_PREFIX": "/renders/",
                            "DEFAULT_WORKFLOWS": "video/single=infinitetalk_video_single", "BUCKET_NAME": "",
                            "EXTRA_WORKFLOW_DIRS": f"{tmp_path}/w1:{tmp_path}/w2"}.items():
        monkeypatch.setenv(variable, value)
    settings = WorkerSettings()
    assert settings.allowed_input_roots == (tmp_path.resolve() / "a", tmp_path.resolve() / "b")
    assert settings.max_input_bytes == int(2.5 * MB) and settings.allow_private_urls
    assert settings.stitch_lead == 0.25 and settings.bucket_prefix == "renders"
    assert settings.bucket_name is None  # empty counts as unset
    assert settings.default_workflow("video", "single") == "infinitetalk_video_single"
    assert settings.default_workflow("image", "single") == "still"  # the built-in default for the rest
    assert settings.extra_workflow_dirs == (tmp_path / "w1", tmp_path / "w2")
    monkeypatch.setenv("STITCH_LEAD", "auto")
    assert WorkerSettings().stitch_lead is None
    assert WorkerSettings(max_duration_s=5).max_duration_s == 5  # arguments override the environment


def test_a_wrong_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("DEFAULT_WORKFLOWS", "audio/single=x")
    with pytest.raises(ValidationError, match=r"DEFAULT_WORKFLOWS: 'audio/single=x' is not one of"):
        WorkerSettings()
    monkeypatch.delenv("DEFAULT_WORKFLOWS")
    monkeypatch.setenv("COMFY_BASE_PORT", "eighty")
    with pytest.raises(ValidationError, match="COMFY_BASE_PORT"):
        PoolSettings()


def test_comfyui_paths_follow_comfyui_home(monkeypatch, tmp_path):
    for variable in ("COMFYUI_PATH", "COMFYUI_PYTHON"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("COMFYUI_HOME", str(tmp_path))
    monkeypatch.setenv("COMFY_GPUS", "0,2")
    monkeypatch.setenv("COMFY_EXTRA_ARGS", "--highvram --reserve-vram '1.5'")
    settings = PoolSettings()
    assert settings.comfy_path == tmp_path / "ComfyUI"
    assert settings.python == sys.executable  # no venv there
    assert settings.gpus == (0, 2) and settings.extra_args == ["--highvram", "--reserve-vram", "1.5"]
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    assert PoolSettings().python == str(tmp_path / "venv" / "bin" / "python")
    monkeypatch.setenv("COMFYUI_PATH", "/opt/ComfyUI")
    assert PoolSettings().comfy_path == Path("/opt/ComfyUI")
