"""Start-up that fails clearly: what keeps the worker from serving, found before it takes a job.

The causes, each reported as one line that names the setting or file and the fix:
- a bad setting: a variable of WorkerSettings or PoolSettings that does not parse or is out of range (the
  worker then runs with that variable's default only to answer jobs);
- a template DEFAULT_WORKFLOWS names that does not exist;
- a required model file missing (REQUIRE_MODELS=1);
- too little VRAM: no instance of this worker fits a device row of any template it serves;
- no ComfyUI instance came up (not installed, or every instance died or timed out while starting).

handler.py reads the settings with read_settings() (never raises), then check_and_start() runs check() and
start_instances(); with any cause the worker serves anyway: each job is answered with answer() (the causes,
and refresh_worker, so that RunPod replaces the worker after the job) instead of a crash and a restart loop
on RunPod; the local API and the local test mode (`make run`) answer the same.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from comfy_manager import InstancePool, PoolSettings
from comfy_manager.gpus import discover_gpus
from comfy_manager.pool import PoolStartError, instance_specs
from worker.request.settings import WorkerSettings
from worker.templates.model_check import missing_models_problem
from worker.templates.template import available_templates

log = logging.getLogger("startup")
JOB_FOLDER = re.compile(r"^[A-Za-z0-9_-]{1,64}-[0-9a-f]{8}$")  # <job id>-<8 hex>: worker/job.py's job_folder
# FANOUT_STALL_S must span this many progress updates: a live job's progress changes at each one
STALL_INTERVALS = 5


@dataclass
class Startup:
    settings: WorkerSettings
    pool_settings: PoolSettings
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self, problem: str) -> None:
        self.problems.append(problem)
        log.error("the worker cannot serve: %s", problem)

    def answer(self) -> dict[str, Any]:
        """What every job gets while a cause stands."""
        return {"error": "the worker cannot serve: " + " | ".join(self.problems), "refresh_worker": True}


def read_settings() -> Startup:
    """The settings from the environment; a variable that does not parse is a problem (logged by
    check_and_start(), once logging is set up) and falls back to its default."""
    problems: list[str] = []
    worker = _settings_or_defaults(WorkerSettings, problems)
    pool = _settings_or_defaults(PoolSettings, problems)
    return Startup(worker, pool, problems)


def check_and_start(startup: Startup, pool: InstancePool) -> None:
    """Logs the settings' problems, runs the checks, then starts the instances if no problem stands."""
    for problem in startup.problems:
        log.error("the worker cannot serve: %s", problem)
    try:
        check(startup)
    except Exception as exc:  # a broken template or manifest: said, not a crash
        startup.report(f"the start-up check failed: {type(exc).__name__}: {exc}")
    if startup.ok:
        clear_job_folders(startup.settings)
        start_instances(startup, pool)
    if not startup.ok:
        log.error("the worker serves anyway, answering every job with the above and refresh_worker "
                  "(RunPod replaces the worker after the job)")


def clear_job_folders(settings: WorkerSettings) -> None:
    """Removes what jobs of an earlier run of this worker left in JOB_WORK_DIR (a job removes its own folder
    when it ends; a worker killed mid-job, e.g. by SIGKILL or the kernel's OOM killer, cannot). Only folders
    named as jobs name theirs (worker/job.py: job_folder) go: nothing else that may share the folder."""
    folder = settings.job_work_dir
    stale = [path for path in folder.iterdir() if JOB_FOLDER.match(path.name)] if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d job folder(s) an earlier run left in %s", len(stale), folder)


def _settings_or_defaults(cls, problems: list[str]):
    """cls() from the environment, with each variable that fails validation replaced by its default (keyword
    arguments win over the environment) and named in problems."""
    defaults: dict[str, Any] = {}
    for _ in range(len(cls.model_fields) + 1):
        try:
            return cls(**defaults)
        except ValidationError as exc:
            for error in exc.errors():
                variable = str(error["loc"][0]) if error["loc"] else "?"
                name = next((n for n, f in cls.model_fields.items() if variable in (n, f.validation_alias)), None)
                if name is None or name in defaults:
                    raise
                info = cls.model_fields[name]
                default = None if info.default_factory is not None else info.default
                defaults[name] = default
                problems.append(_setting_line(variable, error, default))
    raise RuntimeError(f"{cls.__name__}: the settings do not validate even at their defaults")


def _setting_line(variable: str, error: dict, default: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix(f"{variable}: ")
    shown = "" if default is None or len(repr(default)) > 40 else f" (default {default})"
    return (f"bad setting {variable}={str(error.get('input'))[:80]!r}: {message}. Fix: set {variable} as README.md's "
            f"settings say, or unset it{shown}")


def check(startup: Startup) -> None:
    """What can be known before any ComfyUI starts: the templates served, their device rows, the fan-out's stall
    against the progress interval, the models."""
    settings = startup.settings
    templates = available_templates(settings.extra_workflow_dirs)
    served = sorted(set(settings.default_workflows.values()))
    unknown = [name for name in served if name not in templates]
    if unknown:
        startup.report(f"bad setting DEFAULT_WORKFLOWS: it names {', '.join(map(repr, unknown))}, which workflows/ "
                       f"(and EXTRA_WORKFLOW_DIRS) do not hold. Fix: name templates of {sorted(templates)}")
    known = [templates[name] for name in served if name in templates]
    specs = instance_specs(startup.pool_settings, discover_gpus())

    def runs_on(template, spec) -> bool:
        rows = template.spec.device_settings
        return not rows or any(row.fits(spec.vram_gb) for row in rows)

    if known and not any(runs_on(t, spec) for t in known for spec in specs):
        devices = ", ".join("CPU" if s.vram_gb is None else f"GPU {s.gpu} with {s.vram_gb:g} GB" for s in specs)
        rows = sorted({row.label for t in known for row in t.spec.device_settings})
        smallest = min((row.min_vram_gb for t in known for row in t.spec.device_settings if row.device == "gpu"),
                       default=None)
        need = f"a GPU with at least {smallest:g} GB of VRAM" if smallest is not None else "a CPU instance"
        names = ", ".join(t.name for t in known)
        startup.report(
            f"too little VRAM: the templates this worker serves (DEFAULT_WORKFLOWS: {names}) have device rows "
            f"{rows}, and its instances ({devices}; VRAM as NVML reports it, capped by "
            f"COMFY_VRAM_LIMIT_GB) fit none of them. Fix: run it on {need}, raise or unset COMFY_VRAM_LIMIT_GB, "
            "or serve templates that fit (DEFAULT_WORKFLOWS)")
    problem = _stall_problem(settings)
    if problem:
        startup.report(problem)
    problem = missing_models_problem(settings)
    if problem:
        startup.report(f"{problem} (REQUIRE_MODELS=1 asks for every required model)")


def _stall_problem(settings: WorkerSettings) -> str | None:
    """On RunPod (where jobs fan out), FANOUT_STALL_S must span STALL_INTERVALS progress updates: a job whose
    progress stays the same that long is taken for dead (worker/render/remote.py, parent_watch.py)."""
    least = STALL_INTERVALS * settings.progress_interval_s
    if not settings.on_runpod or settings.fanout_stall_s >= least:
        return None
    default = WorkerSettings.model_fields["fanout_stall_s"].default
    return (f"bad setting FANOUT_STALL_S={settings.fanout_stall_s:g}: a job whose progress stays the same that long "
            f"is taken for dead, and progress is sent every PROGRESS_INTERVAL_S ({settings.progress_interval_s:g} s). "
            f"Fix: set FANOUT_STALL_S to at least {least:g} (the default is {default:g}), or lower PROGRESS_INTERVAL_S")


def start_instances(startup: Startup, pool: InstancePool) -> None:
    """Starts the ComfyUI instances; none coming up is a problem, one line per instance that failed."""
    try:
        pool.start()
    except PoolStartError as exc:
        fix = ("Fix: ComfyUI's log says why; scripts/install_comfyui.sh installs ComfyUI and its venv "
               "(COMFYUI_PATH, COMFYUI_PYTHON point at another), COMFY_STARTUP_TIMEOUT_S gives a slow start longer")
        if len(exc.causes) == 1 and "ComfyUI not found" in exc.causes[0]:
            startup.report(exc.causes[0])
        else:
            startup.report(f"no ComfyUI instance came up: {'; '.join(exc.causes)}. {fix}")
