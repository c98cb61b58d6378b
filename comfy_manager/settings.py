"""Settings read from the environment, each declared once: its variable, its default, its type.

EnvSettings is the base of every settings class of the worker (here PoolSettings; worker/request/settings.py has
WorkerSettings). A field is declared with env("VARIABLE", default): constructing the class reads that
variable (an empty one counts as unset), and keyword arguments, by field name, override it. README.md
lists every variable; the names and defaults here must match it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def env(variable: str, default: Any = None, *, derived: Callable[[dict], Any] | None = None, **field: Any) -> Any:
    """A field read from the environment variable `variable`; when it is unset or empty, `default`, or
    derived(the fields declared before it)."""
    if derived is not None:
        return Field(default_factory=derived, validation_alias=variable, **field)
    return Field(default, validation_alias=variable, **field)


class EnvSettings(BaseSettings):
    # case_sensitive: only the exact upper-case names count. frozen: settings do not change under a job;
    # copy with model_copy(update={...}). validate_by_name: code and tests pass fields by their names.
    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, frozen=True, validate_by_name=True)

    @classmethod
    def from_env(cls):
        """The settings as the environment sets them (same as cls())."""
        return cls()


class PoolSettings(EnvSettings):
    """Where ComfyUI is installed and how many instances of it to run, on which GPUs and ports."""

    comfy_home: Path = env("COMFYUI_HOME", REPO_ROOT / ".comfyui")  # where scripts/install_comfyui.sh put it
    comfy_path: Path = env("COMFYUI_PATH", derived=lambda fields: fields["comfy_home"] / "ComfyUI")
    python: str = env("COMFYUI_PYTHON", derived=lambda fields: _venv_python(fields["comfy_home"]))
    instances_dir: Path = env("COMFY_INSTANCES_DIR", Path("/tmp/comfy-instances"))
    base_port: int = env("COMFY_BASE_PORT", 8188)  # instance i listens on 127.0.0.1:(base_port + i)
    cpu_instances: int = env("COMFY_CPU_INSTANCES", 2)  # instances when there is no GPU
    force_cpu: bool = env("COMFY_FORCE_CPU", False)
    startup_timeout_s: float = env("COMFY_STARTUP_TIMEOUT_S", 300.0)
    extra_args: Annotated[list[str], NoDecode] = env("COMFY_EXTRA_ARGS", [])  # shell words, e.g. --highvram
    gpus: Annotated[tuple[int, ...] | None, NoDecode] = env("COMFY_GPUS", None)  # "0,1"; None: every GPU
    # Each GPU instance may use at most this much VRAM (GB): the worker's node caps its CUDA allocator, and
    # templates choose their settings for this size. Runs a big GPU as a smaller one would (benchmarks).
    vram_limit_gb: float | None = env("COMFY_VRAM_LIMIT_GB", None)
    # Health (pool.py): an instance whose process dies is restarted, the first time at once, then after
    # restart_backoff_s doubled for each restart within restart_window_s (at most 60 s); one that needed
    # restart_limit restarts within the window is taken out of service.
    restart_limit: int = env("COMFY_RESTART_LIMIT", 5, ge=1)
    restart_window_s: float = env("COMFY_RESTART_WINDOW_S", 600.0, gt=0)
    restart_backoff_s: float = env("COMFY_RESTART_BACKOFF_S", 2.0, ge=0)
    # An instance that goes idle (no segment waiting for it) is asked to drop what ComfyUI keeps from its
    # last prompt (POST /free: cached node outputs, and the models they hold), so memory between jobs
    # stays flat; the next job loads its models again. None ("auto"): CPU instances do, GPU instances keep
    # them (their cache holds the models and what the next job reuses, e.g. a reference image's encoding).
    free_when_idle: bool | None = env("COMFY_FREE_WHEN_IDLE", None)

    @field_validator("extra_args", mode="before")
    @classmethod
    def _shell_words(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("free_when_idle", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if value == "auto" else value

    @field_validator("gpus", mode="before")
    @classmethod
    def _indices(cls, value: Any) -> Any:
        return tuple(int(i) for i in value.split(",")) if isinstance(value, str) else value


def _venv_python(comfy_home: Path) -> str:
    """The Python of ComfyUI's own venv (scripts/install_comfyui.sh), else this one."""
    venv_python = comfy_home / "venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable
