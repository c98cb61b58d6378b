#!/usr/bin/env bash
# Makes a plain Debian base image for buildah without any registry: mmdebstrap writes a minimal root file
# system from Debian's own archive (~30 s), buildah commits it as localhost/debian-base:<suite>. An image
# already there is reused (so builds on top of it keep their cached layers); `buildah rmi` it to refresh.
# Prints the image name on its last line. Root and Debian's buildah + mmdebstrap needed.
#   usage: scripts/debian_base_image.sh [suite]      (default bookworm: Debian 12, python3 3.11)
#   DEBIAN_MIRROR=url   default http://deb.debian.org/debian (its -security sibling is added)
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-bookworm}
image=localhost/debian-base:$suite
read -r -a storage <<< "$(bash scripts/build_image.sh --storage-flags)"
if buildah "${storage[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tmp=$(mktemp -d)
ctr=""
trap 'rm -rf "$tmp"; [ -z "$ctr" ] || buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
echo "making $image with mmdebstrap from $mirror" >&2
mmdebstrap --quiet --variant=minbase "$suite" "$tmp/rootfs.tar" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb ${mirror}-security $suite-security main"
ctr=$(buildah "${storage[@]}" from scratch)
buildah "${storage[@]}" add --quiet "$ctr" "$tmp/rootfs.tar" /
buildah "${storage[@]}" config --cmd '["/bin/bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
buildah "${storage[@]}" commit --quiet --format docker "$ctr" "$image" >/dev/null
echo "$image"
