# InfiniteTalk on RunPod serverless: ComfyUI 0.3.75 + ComfyUI-WanVideoWrapper + the segment-parallel worker.
#   docker build -t <registry>/infinitetalk-worker:<tag> .                        (models baked in, ~35 GB)
#   docker build --build-arg BAKE_MODELS=0 -t <registry>/infinitetalk-worker:<tag>-slim .
#                                         (models from a network volume at /runpod-volume/models)
# docs/DEPLOY.md has the whole procedure. torch 2.14.1 from PyPI is a CUDA 13.0 build (it brings its own
# CUDA libraries), so the base is the matching CUDA 13.0 runtime: hosts need an NVIDIA driver >= 580.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COMFYUI_HOME=/comfyui \
    WORKER_VENV=/worker/.venv \
    WORKER_DEV=0

# Ubuntu 24.04's python3 is 3.12. Packages follow the noble archive (security updates included)
# rather than pinned versions, which the archive drops as soon as they are superseded.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip python3-dev build-essential \
        git ffmpeg ca-certificates libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /worker

# The worker's environment, then ComfyUI's, both through the scripts the CPU dev path uses.
COPY requirements/ requirements/
COPY scripts/install_worker.sh scripts/install_comfyui.sh scripts/
RUN bash scripts/install_worker.sh
COPY comfy_nodes/ comfy_nodes/
RUN bash scripts/install_comfyui.sh

# The custom nodes, each at the commit models/manifest.json names.
COPY models/manifest.json models/manifest.json
COPY scripts/install_custom_nodes.sh scripts/
RUN bash scripts/install_custom_nodes.sh
COPY comfy/extra_model_paths.yaml /comfyui/ComfyUI/extra_model_paths.yaml

# BAKE_MODELS=1: every required model into /models (ComfyUI reads it through extra_model_paths.yaml).
# Only the manifest and the download code are copied first, so code changes do not re-download.
ARG BAKE_MODELS=1
COPY worker/__init__.py worker/models.py worker/
COPY scripts/download_models.py scripts/
RUN if [ "$BAKE_MODELS" = 1 ]; then \
        /comfyui/venv/bin/python scripts/download_models.py --root /models \
        && rm -rf /root/.cache/huggingface; \
    else \
        mkdir -p /models; \
    fi

COPY . /worker

# REQUIRE_MODELS=1: the worker refuses to start (fitness check) while a required model is missing.
ENV PATH=/worker/.venv/bin:$PATH \
    REQUIRE_MODELS=1 \
    MODELS_ROOT=/runpod-volume/models \
    OUTPUT_VOLUME_DIR=/runpod-volume/outputs \
    DEFAULT_WORKFLOWS=image/single=infinitetalk_image_single,image/multi=infinitetalk_image_multi,video/single=infinitetalk_video_single,video/multi=infinitetalk_video_multi

CMD ["python", "-u", "handler.py"]
