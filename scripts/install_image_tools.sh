#!/usr/bin/env bash
# Installs what builds and runs the image without a Docker engine (tests/test_image.py, `make image` where
# there is no docker): Debian's buildah (builds with --isolation chroot, runs with `buildah run`) and
# mmdebstrap (makes the local Debian base image). Debian/Ubuntu, as root (or with sudo); once.
set -euo pipefail
if command -v buildah >/dev/null && command -v mmdebstrap >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing buildah and mmdebstrap with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends buildah mmdebstrap >/dev/null
buildah --version
