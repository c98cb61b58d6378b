"""The worker's check on its model files: with REQUIRE_MODELS=1, a worker that lacks a required model cannot
serve, and says which files are missing, where it looked, and the fix (worker/api/startup.py reports it)."""

from __future__ import annotations

from worker.request.settings import WorkerSettings
from worker.templates.model_files import load_manifest, missing_message, missing_models


def missing_models_problem(settings: WorkerSettings) -> str | None:
    """One line naming every missing required model file and the fix; None when REQUIRE_MODELS is off or
    every file is there."""
    if not settings.require_models:
        return None
    missing = missing_models(manifest=load_manifest(settings.models_manifest))
    return missing_message(missing, one_line=True) if missing else None


def models_fitness_check() -> None:
    """The same check as a runpod fitness check (runpod.serverless.register_fitness_check), which ends the
    worker before it takes a job; handler.py reports it through worker/api/startup.py instead, so that jobs
    are answered with the reason."""
    problem = missing_models_problem(WorkerSettings())
    if problem:
        raise RuntimeError(problem)
