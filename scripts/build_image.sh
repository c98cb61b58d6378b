#!/usr/bin/env bash
# Builds the worker image from the Dockerfile with whatever is there: docker (with a running engine),
# podman or buildah (daemonless, as root: --isolation chroot). `make image` runs it; so does
# tests/test_image.py.
#   IMAGE=name:tag               default infinitetalk-worker:local
#   BAKE_MODELS=0|1              default 0 (models from the network volume); 1 downloads ~35 GB into the image
#   BASE_IMAGE=image             default: the Dockerfile's (the CUDA 13.0 runtime on Ubuntu 24.04)
#   CUSTOM_NODES_ARCHIVES=dir    custom nodes from dir/<name>-<commit>.tar.gz instead of GitHub: the folder
#                                is mounted into the build (podman/buildah; docker clones from GitHub)
#   HOST_PIP=auto|0              auto (podman/buildah): this machine's pip set-up is lent to the build's pip:
#                                its local wheel folders (find-links, file:// indexes), so torch's ~3 GB of
#                                wheels come from disk, not PyPI, and its CA bundle (cert), for networks
#                                whose HTTPS goes through a proxy with its own CA. Mounted read-only, passed
#                                as build args: nothing of it stays in the image.
#   IMAGE_BUILDER=docker|podman|buildah   which tool (default: the first of these that works)
#   BUILDAH_STORAGE_FLAGS=...    buildah's storage flags (default: overlay if it works here, else vfs)
#   --storage-flags              only print the buildah storage flags this machine needs, and exit
set -euo pipefail
cd "$(dirname "$0")/.."

# overlay where the kernel allows it (fast, shares layers); vfs (full copies, slow but works anywhere)
# in a storage root of its own otherwise, since one storage root serves one driver.
buildah_storage_flags() {
  if [ -n "${BUILDAH_STORAGE_FLAGS+set}" ]; then
    echo "$BUILDAH_STORAGE_FLAGS"
    return
  fi
  local ctr
  if ctr=$(buildah --storage-driver overlay from scratch 2>/dev/null) \
     && buildah --storage-driver overlay mount "$ctr" >/dev/null 2>&1; then
    buildah --storage-driver overlay rm "$ctr" >/dev/null
    echo "--storage-driver overlay"
  else
    [ -n "${ctr:-}" ] && buildah --storage-driver overlay rm "$ctr" >/dev/null 2>&1
    echo "--storage-driver vfs --root /var/lib/containers/storage-vfs"
  fi
}

if [ "${1:-}" = "--storage-flags" ]; then
  buildah_storage_flags
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--storage-flags]" >&2; exit 2; }

builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null; then
    builder=podman
  elif command -v buildah >/dev/null; then
    builder=buildah
  else
    echo "no image builder: install docker (with its engine running), podman or buildah" >&2
    echo "  (Debian/Ubuntu as root: apt-get install buildah; then make image)" >&2
    exit 1
  fi
fi

image=${IMAGE:-infinitetalk-worker:local}
args=(--build-arg "BAKE_MODELS=${BAKE_MODELS:-0}")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

if [ -n "${CUSTOM_NODES_ARCHIVES:-}" ]; then
  if [ "$builder" = docker ]; then
    echo "docker build cannot mount CUSTOM_NODES_ARCHIVES ($CUSTOM_NODES_ARCHIVES): custom nodes come from GitHub"
  else
    archives=$(cd "$CUSTOM_NODES_ARCHIVES" && pwd)
    args+=(--volume "$archives:/tmp/custom-nodes-archives:ro"
           --build-arg CUSTOM_NODES_ARCHIVES=/tmp/custom-nodes-archives)
  fi
fi

if [ "${HOST_PIP:-auto}" = auto ] && [ "$builder" != docker ]; then
  # Lines "mount <dir>", "find-links <value>", "index <value>", "cert <file>" from this machine's pip config.
  while read -r kind value; do
    case "$kind" in
      mount) args+=(--volume "$value:$value:ro") ;;
      find-links) args+=(--build-arg "PIP_FIND_LINKS=$value") ;;
      index) args+=(--build-arg "PIP_EXTRA_INDEX_URL=$value") ;;
      cert) args+=(--volume "$value:/tmp/host-ca-bundle.crt:ro" --build-arg PIP_CERT=/tmp/host-ca-bundle.crt) ;;
    esac
  done < <(python3 - <<'PY'
import shlex, subprocess
from pathlib import Path
listing = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
find_links, indexes, mounts, cert = [], [], [], None
for line in listing.splitlines():  # e.g. global.extra-index-url='file:///a/simple file:///b/simple'
    key, _, quoted = line.partition("=")
    option = key.rsplit(".", 1)[-1]
    if option == "cert" and quoted and Path(shlex.split(quoted)[0]).is_file():
        cert = shlex.split(quoted)[0]
    if option not in ("find-links", "extra-index-url") or not quoted:
        continue
    for item in shlex.split(quoted)[0].split():
        if "://" in item and not item.startswith("file://"):
            continue  # a remote index is reachable from the build as it is
        path = Path(item.removeprefix("file://"))
        if not path.is_dir():
            continue
        if option == "find-links" and str(path) not in find_links:
            find_links.append(str(path))
            mounts.append(str(path))
        elif option == "extra-index-url" and f"file://{path}" not in indexes:
            indexes.append(f"file://{path}")
            # A local index's pages link to files beside it (<root>/simple/x/ -> <root>/files/): mount <root>.
            mounts.append(str(path.parent))
for mount in dict.fromkeys(mounts):
    print("mount", mount)
if find_links:
    print("find-links", " ".join(find_links))
if indexes:
    print("index", " ".join(indexes))
if cert:
    print("cert", cert)
PY
)
fi

echo "building $image with $builder (BAKE_MODELS=${BAKE_MODELS:-0}${BASE_IMAGE:+, BASE_IMAGE=$BASE_IMAGE})"
start=$(date +%s)
case "$builder" in
  docker) docker build "${args[@]}" -t "$image" . ;;
  podman) podman build --layers --format docker "${args[@]}" -t "$image" . ;;
  buildah)
    read -r -a storage <<< "$(buildah_storage_flags)"
    buildah "${storage[@]}" bud --isolation chroot --layers --format docker --pull=false "${args[@]}" -t "$image" . ;;
  *) echo "IMAGE_BUILDER must be docker, podman or buildah (got '$builder')" >&2; exit 2 ;;
esac
echo "built $image in $(( $(date +%s) - start )) s"
