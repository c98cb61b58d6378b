#!/usr/bin/env bash
# Installs the system tools the worker needs (ffmpeg/ffprobe) from Debian/Ubuntu packages, once.
set -euo pipefail
if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing ffmpeg with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
ffmpeg -version | head -1
