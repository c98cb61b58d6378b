#!/usr/bin/env bash
# Creates the worker's virtual environment (default .venv) with pinned packages; idempotent.
#   WORKER_VENV=path   where to put it        WORKER_DEV=1   also install the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${WORKER_VENV:-.venv}
reqs=(requirements/worker.txt)
[ "${WORKER_DEV:-1}" = 1 ] && reqs+=(requirements/dev.txt)
stamp="$venv/.installed"
want=$(cat "${reqs[@]}" requirements/worker.lock | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
args=()
for r in "${reqs[@]}"; do args+=(-r "$r"); done
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" -c requirements/worker.lock
echo "$want" > "$stamp"
echo "worker environment ready in $venv"
