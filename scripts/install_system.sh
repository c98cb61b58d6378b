#!/usr/bin/env bash
# Installs the system tools the worker needs (ffmpeg/ffprobe) and the tests use (espeak-ng: text-to-speech
# audio as users send it) from Debian/Ubuntu packages, once.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing ${missing[*]} with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
ffmpeg -version | head -1
espeak-ng --version
