# InfiniteTalk on RunPod serverless: ComfyUI 0.3.75 + ComfyUI-WanVideoWrapper + the segment-parallel worker.
#   make image                                     (BAKE_MODELS=0, with docker, podman or buildah; see README)
#   docker build -t <registry>/infinitetalk-worker:<tag> .                        (models baked in, ~35 GB)
#   docker build --build-arg BAKE_MODELS=0 -t <registry>/infinitetalk-worker:<tag>-slim .
#                                         (models from a network volume at /runpod-volume/models)
# docs/DEPLOY.md has the whole procedure. torch 2.14.1 from PyPI is a CUDA 13.0 build that brings every
# CUDA library it loads in its own wheels (nvidia-*, found through torch's RPATH), so the base is CUDA's
# smallest flavour, `base` (CUDA 13.0 runtime core, the driver-version check NVIDIA_REQUIRE_CUDA, the
# container toolkit's variables), not `runtime`, whose ~2 GB of libraries torch would never load
# (README, "Container image"). Hosts need an NVIDIA driver >= 580.
# BASE_IMAGE may be another Debian or Ubuntu whose python3 the locks install on: the image test
# (tests/test_image.py) builds this file unchanged from a plain Debian 12 root file system (Python 3.11);
# tests/test_dockerfile.py resolves the locks for the production Python (3.12).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COMFYUI_HOME=/comfyui \
    WORKER_VENV=/worker/.venv \
    WORKER_DEV=0

# Ubuntu 24.04's python3 is 3.12 (Debian 12's 3.11). Packages follow the distribution's archive
# (security updates included) rather than pinned versions, which the archive drops once superseded.
# build-essential and python3-dev stay: triton compiles its launcher with them when a kernel first runs.
# libgl1 and libglib2.0-0: opencv-python (the wrapper's) loads them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip python3-dev build-essential \
        git ffmpeg ca-certificates libgl1 libglib2.0-0 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /worker

# Build-time pip settings, never in the image (scripts/build_image.sh sets them where the build machine's
# pip has local wheel folders or a CA bundle of its own and mounts those): where pip may also look
# (e.g. --build-arg PIP_FIND_LINKS=/wheels), and the CA bundle for HTTPS. Empty: PyPI, system CAs.
ARG PIP_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_CERT=""

# Layers from the slowest-changing to the fastest: environments (locks), custom nodes (manifest), models,
# then the code, so a code change rebuilds only the last two layers (seconds).
# The worker's environment, then ComfyUI's, both through the scripts the CPU dev path uses.
COPY requirements/worker.txt requirements/worker.lock requirements/
COPY scripts/install_worker.sh scripts/
RUN bash scripts/install_worker.sh
COPY requirements/comfyui.txt requirements/comfyui.lock requirements/
COPY scripts/install_comfyui.sh scripts/
RUN bash scripts/install_comfyui.sh

# The custom nodes, each at the commit models/manifest.json names: cloned from GitHub, or, with
# CUSTOM_NODES_ARCHIVES=<dir> and that dir mounted into the build (buildah/podman -v), unpacked from
# <name>-<commit>.tar.gz trees there (scripts/install_custom_nodes.sh).
ARG CUSTOM_NODES_ARCHIVES=""
COPY models/manifest.json models/manifest.json
COPY scripts/install_custom_nodes.sh scripts/
RUN bash scripts/install_custom_nodes.sh
COPY models/extra_model_paths.yaml /comfyui/ComfyUI/extra_model_paths.yaml

# BAKE_MODELS=1: every required model into /models (ComfyUI reads it through extra_model_paths.yaml).
# Only the manifest and the download code are copied first, so code changes do not re-download.
ARG BAKE_MODELS=1
COPY worker/__init__.py worker/
COPY worker/templates/__init__.py worker/templates/model_files.py worker/templates/
COPY scripts/download_models.py scripts/
RUN if [ "$BAKE_MODELS" = 1 ]; then \
        /comfyui/venv/bin/python scripts/download_models.py --root /models \
        && rm -rf /root/.cache/huggingface; \
    else \
        mkdir -p /models; \
    fi

# The code. install_comfyui.sh again only links the worker's own nodes (comfy_nodes/) into ComfyUI: its
# tree and venv are already there.
COPY . /worker
RUN bash scripts/install_comfyui.sh

# REQUIRE_MODELS=1: the worker refuses to start (fitness check) while a required model is missing.
ENV PATH=/worker/.venv/bin:$PATH \
    REQUIRE_MODELS=1 \
    MODELS_ROOT=/runpod-volume/models \
    OUTPUT_VOLUME_DIR=/runpod-volume/outputs \
    DEFAULT_WORKFLOWS=image/single=infinitetalk_image_single,image/multi=infinitetalk_image_multi,video/single=infinitetalk_video_single,video/multi=infinitetalk_video_multi

CMD ["python", "-u", "handler.py"]
