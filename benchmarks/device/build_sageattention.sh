#!/usr/bin/env bash
# Builds SageAttention 2.2.0 as a wheel for the lent H200 (Hopper, sm_90a), on a machine without a GPU, against
# the device image's torch (2.11.0, CUDA 13.0, Python 3.12) with nvcc 13.0 from PyPI's CUDA wheels. No wheel of
# SageAttention 2 is on PyPI (only the Triton-only 1.x); its CUDA kernels are what the wrapper's
# `attention_mode: "sageattn"` runs on Hopper (INT8 Q.K, FP8 P.V with fp32 accumulation). Issue 25 measures them
# against cuDNN's bf16 attention (docs/PERFORMANCE.md).
#
#   benchmarks/device/build_sageattention.sh [SOURCE]
#     SOURCE  a git repository holding the pinned commit (default: a clone from GitHub); on machines without
#             GitHub, the `fetch` tool's copy (/work/.mirror/thu-ml+SageAttention/repo)
#   -> .whl/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl (.whl/ is ignored by git; a device call carries it)
#
# Then, in a device call that carries .whl (.devcarry travels in the next call, while the machine is still warm:
# the two together are over the 64 MiB a call carries):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/sage .whl/sageattention-2.2.0-*.whl
# and PYTHONPATH=/tmp/sage before /tmp/site in later calls on the same warm machine.
#
# PYTHON (default python3.12) is the Python 3.12 to build with. BUILD_DIR (default /tmp/sage-build) holds the build's venv (~6 GB: torch and its CUDA libraries, needed to
# import torch), the sources and build.log; MAX_JOBS (default: the CPU count) sets the parallel nvcc jobs of an
# extension, EXT_PARALLEL (default 1) the extensions built at once.
set -euo pipefail
source=${1:-https://github.com/thu-ml/SageAttention}
[ ! -d "$source" ] || source=$(cd "$source" && pwd)  # a folder given relative to where this was started
cd "$(dirname "$0")/../.."
repo=$(pwd)
COMMIT=eb615cf6cf4d221338033340ee2de1c37fbdba4a  # tag v2.2.0
TORCH=2.11.0                                       # the device image's (docs/perf/*.json: 2.11.0+cu130)
CUDA_TOOLKIT=13.0.2                                # torch 2.11.0's own CUDA (its cuda-toolkit pin): nvcc 13.0.88
work=${BUILD_DIR:-/tmp/sage-build}
jobs=${MAX_JOBS:-$(nproc)}
python=${PYTHON:-python3.12}  # PYTHON: a Python 3.12 elsewhere (e.g. a pyenv version's bin/python3.12)
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
  || { echo "Python 3.12 is needed (the device's; the wheel is cp312): set PYTHON" >&2; exit 1; }
mkdir -p "$work" .whl .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

ready="$work/venv/.ready-torch$TORCH-cuda$CUDA_TOOLKIT"
if [ ! -f "$ready" ]; then
  rm -rf "$work/venv"
  "$python" -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "torch==$TORCH" "cuda-toolkit[nvcc,nvvm,crt,cccl,cudart]==$CUDA_TOOLKIT" \
    setuptools wheel packaging ninja
  touch "$ready"
fi
# CUDA_HOME as torch's extension builder expects it (bin/nvcc, include, lib64), from the wheels' nvidia/cu13.
cu=$("$work/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -e "$cu/lib64" ] || ln -s lib "$cu/lib64"
[ -e "$cu/lib/libcudart.so" ] || ln -s libcudart.so.13 "$cu/lib/libcudart.so"  # the wheel has only the .so.13
# The sm90 kernels call one driver function, cuTensorMapEncodeTiled, and link -lcuda. There is no driver here: a
# stand-in libcuda.so that defines that function (soname libcuda.so.1) satisfies the link and keeps the dependency
# (an empty one is dropped by the linker's --as-needed, and the module then fails to load: "undefined symbol");
# on the device the driver's libcuda.so.1 provides the function.
echo 'int cuTensorMapEncodeTiled(void) { return 1; }' | gcc -shared -x c - -Wl,-soname,libcuda.so.1 -o "$cu/lib/libcuda.so"
"$cu/bin/nvcc" --version | tail -2

# Only what the build reads (the repository's images and GIFs are large, and a mirror may lack them).
repo_git=$source
if [ ! -d "$source" ]; then
  rm -rf "$work/src.git"
  git clone -q --bare "$source" "$work/src.git" || exit 1
  repo_git=$work/src.git
fi
rm -rf "$work/src" && mkdir -p "$work/src"
git -C "$repo_git" archive "$COMMIT" setup.py README.md LICENSE sageattention csrc | tar -x -C "$work/src"
cd "$work/src"
started=$(date +%s)
CUDA_HOME=$cu PATH="$cu/bin:$PATH" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$jobs EXT_PARALLEL=${EXT_PARALLEL:-1} \
  "$work/venv/bin/pip" wheel --no-build-isolation --no-deps -w "$repo/.whl" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
echo "built in $(( $(date +%s) - started )) s (log: $work/build.log):"
wheel=$(ls "$repo"/.whl/sageattention-2.2.0-*.whl)
ls -la "$wheel"
# The Hopper module must name the driver (see the stand-in above) and hold sm_90a code.
rm -rf "$work/check" && unzip -q -d "$work/check" "$wheel" 'sageattention/_qattn_sm90*'
readelf -d "$work"/check/sageattention/_qattn_sm90*.so | grep -q 'NEEDED.*libcuda.so.1' \
  || { echo "_qattn_sm90 does not name libcuda.so.1: it would not load on the device" >&2; exit 1; }
cuobjdump=$(find "$work/venv" -name cuobjdump -type f | head -1)  # Triton's copy
[ -z "$cuobjdump" ] || "$cuobjdump" --list-elf "$work"/check/sageattention/_qattn_sm90*.so
