# Sourced at the start of a device command (see prepare_carry.sh): unpacks the carried packages, ffmpeg,
# ComfyUI and the WanVideoWrapper under /tmp and exports PATH, PYTHONPATH, COMFYUI_PATH and COMFYUI_PYTHON.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/site /tmp/ffbin
[ -d /tmp/site/av ] || tar -xJf .devcarry/site.tar.xz -C /tmp/site || return 1
# An older site.tar.xz removed whole transformers model folders; this puts back their tokenizer code.
[ ! -f .devcarry/transformers_fix.tar.xz ] || tar -xJf .devcarry/transformers_fix.tar.xz -C /tmp/site || return 1
[ -f /tmp/ffbin/ffmpeg ] || tar -xJf .devcarry/ffmpeg.tar.xz -C /tmp/ffbin || return 1
chmod +x /tmp/ffbin/ffmpeg /tmp/ffbin/ffprobe
[ -d /tmp/ComfyUI ] || tar -xJf .devcarry/comfyui.tar.xz -C /tmp || return 1
[ -d /tmp/ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper ] || tar -xJf .devcarry/wrapper.tar.xz -C /tmp/ComfyUI/custom_nodes || return 1
export PATH=/tmp/ffbin:$PATH PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# SageAttention 2.2.0 (prepare_carry.sh's sage2.tar.xz) ahead of site's 1.0.6, when it was carried
if [ -f .devcarry/sage2.tar.xz ]; then
  [ -d /tmp/sage/sageattention ] || { mkdir -p /tmp/sage && tar -xJf .devcarry/sage2.tar.xz -C /tmp/sage; } || return 1
  export PYTHONPATH=/tmp/sage:$PYTHONPATH
fi
export COMFYUI_PATH=/tmp/ComfyUI COMFYUI_PYTHON=$(command -v python3)
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
ln -sfn "$(pwd)/comfy_nodes" /tmp/ComfyUI/custom_nodes/runpod_worker_nodes
