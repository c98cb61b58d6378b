#!/usr/bin/env bash
# Installs the ComfyUI custom nodes listed in models/manifest.json ("custom_nodes": name, repo, commit):
# each is cloned from GitHub at exactly its commit (or unpacked from a pre-fetched tree, see
# CUSTOM_NODES_ARCHIVES) into ComfyUI/custom_nodes/<name>, and its requirements.txt is pip-installed into
# ComfyUI's Python environment; idempotent and then quiet (a node already at its commit is left alone, its
# requirements are installed again only when they, the lock or the python change: .installed-requirements).
#   --dry-run             print what would be cloned and installed; touch nothing, need no network
#   COMFYUI_HOME=dir      as install_comfyui.sh (default .comfyui); ComfyUI is $COMFYUI_HOME/ComfyUI
#   COMFYUI_PYTHON=path   ComfyUI's python (default $COMFYUI_VENV/bin/python, venv $COMFYUI_HOME/venv)
#   MODELS_MANIFEST=file  the manifest (default models/manifest.json)
#   GITHUB_URL=url        where repos are cloned from (default https://github.com)
#   CUSTOM_NODES_ARCHIVES=dir   no GitHub: take each node from dir/<name>-<commit>.tar.gz instead (a tree
#                         whose top folder is <name>, as `git archive --prefix=<name>/` writes it); a node
#                         without its archive there is an error. The commit is recorded in .installed-commit.
# Every package in requirements/comfyui.lock stays at its locked version: a node's requirements may add
# packages but never move a locked one (the whole lock is passed to pip as constraints).
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
  esac
done
home=${COMFYUI_HOME:-.comfyui}
venv=${COMFYUI_VENV:-$home/venv}
python=${COMFYUI_PYTHON:-$venv/bin/python}
manifest=${MODELS_MANIFEST:-models/manifest.json}
github=${GITHUB_URL:-https://github.com}
nodes_dir="$home/ComfyUI/custom_nodes"

# One "name repo commit" line per node, checked before anything is cloned.
nodes=$(python3 - "$manifest" <<'PY'
import json, re, sys
manifest = json.load(open(sys.argv[1]))
for node in manifest.get("custom_nodes", []):
    name, repo, commit = node.get("name", ""), node.get("repo", ""), node.get("commit", "")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
        sys.exit(f"custom node name {name!r} is not a plain folder name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        sys.exit(f"custom node {name}: repo {repo!r} is not owner/name")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        sys.exit(f"custom node {name}: commit {commit!r} is not a full 40-character sha")
    print(name, repo, commit)
PY
)

constraints=requirements/comfyui.lock
archives=${CUSTOM_NODES_ARCHIVES:-}

count=0
changed=0
while read -r name repo commit; do
  [ -n "$name" ] || continue
  count=$((count + 1))
  dest="$nodes_dir/$name"
  url="$github/$repo"
  archive=${archives:+$archives/$name-$commit.tar.gz}
  if [ "$dry_run" = 1 ]; then
    if [ -n "$archive" ]; then echo "would unpack $archive into $dest"; else echo "would clone $url at $commit into $dest"; fi
    echo "would pip install -r $dest/requirements.txt (if present) with $python"
    continue
  fi
  if [ -d "$dest/.git" ] && [ "$(git -C "$dest" rev-parse HEAD 2>/dev/null)" = "$commit" ] \
     || [ "$(cat "$dest/.installed-commit" 2>/dev/null)" = "$commit" ]; then
    :  # already at its commit
  elif [ -n "$archive" ]; then
    [ -f "$archive" ] || { echo "$name: no $archive (CUSTOM_NODES_ARCHIVES holds <name>-<commit>.tar.gz)" >&2; exit 1; }
    echo "unpacking $archive into $dest"
    changed=$((changed + 1))
    rm -rf "$dest" "$dest.unpacking"
    mkdir -p "$dest.unpacking"
    tar -xzf "$archive" -C "$dest.unpacking"
    [ -d "$dest.unpacking/$name" ] || { echo "$name: $archive has no top folder $name/" >&2; exit 1; }
    mv "$dest.unpacking/$name" "$dest"
    rm -rf "$dest.unpacking"
    echo "$commit" > "$dest/.installed-commit"
  else
    echo "cloning $url at $commit into $dest"
    changed=$((changed + 1))
    rm -rf "$dest"
    mkdir -p "$dest"
    git -C "$dest" init -q
    git -C "$dest" remote add origin "$url"
    git -C "$dest" fetch -q --depth 1 origin "$commit"
    git -C "$dest" checkout -q --detach FETCH_HEAD
    [ "$(git -C "$dest" rev-parse HEAD)" = "$commit" ] || { echo "$name: checkout is not $commit" >&2; exit 1; }
    if [ -f "$dest/.gitmodules" ]; then
      git -C "$dest" submodule update -q --init --recursive --depth 1
    fi
  fi
  if [ -f "$dest/requirements.txt" ]; then
    want=$( (cat "$dest/requirements.txt" "$constraints"; echo "$python") | sha256sum | cut -c1-16)
    if [ "$(cat "$dest/.installed-requirements" 2>/dev/null)" != "$want" ]; then
      echo "installing $name's requirements into $python"
      "$python" -m pip install -q --disable-pip-version-check -r "$dest/requirements.txt" -c "$constraints"
      echo "$want" > "$dest/.installed-requirements"
      changed=$((changed + 1))
    fi
  fi
done <<< "$nodes"
if [ "$dry_run" = 1 ]; then
  echo "$count custom node(s) listed (dry run)"
elif [ "$changed" -gt 0 ]; then
  echo "$count custom node(s) ready in $nodes_dir"
fi
