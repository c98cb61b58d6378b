#!/usr/bin/env bash
# Downloads the models in models/manifest.json (see scripts/download_models.py for the options).
#   MODELS_ROOT=dir   where they go (default /runpod-volume/models)   HF_TOKEN, HF_ENDPOINT as huggingface_hub
#   PYTHON=python     the interpreter (default: the worker's .venv if present, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" scripts/download_models.py "$@"
