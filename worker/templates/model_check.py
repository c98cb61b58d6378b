"""The worker's fitness check on its model files (handler.py registers it with runpod): with REQUIRE_MODELS=1,
a worker that lacks a required model refuses to serve, naming each missing file and the fix."""

from __future__ import annotations

from worker.request.settings import WorkerSettings
from worker.templates.model_files import load_manifest, missing_message, missing_models


def models_fitness_check() -> None:
    """For runpod.serverless.register_fitness_check: with REQUIRE_MODELS=1, refuse to serve without models."""
    settings = WorkerSettings()
    if not settings.require_models:
        return
    missing = missing_models(manifest=load_manifest(settings.models_manifest))
    if missing:
        raise RuntimeError(missing_message(missing))
