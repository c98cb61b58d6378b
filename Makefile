# Two commands do everything on a fresh Linux machine (Python 3 + apt):
#   make run    set up, then run the sample job (test_input.json) through the runpod SDK's local mode
#   make test   set up, then run the whole test suite (tests/test_image.py builds and runs the container
#               image where root, buildah and mmdebstrap are there: `make image-tools` installs them)
#   make test-fast  the fast tier: every test that starts no ComfyUI and builds no image (under 3 minutes)
#   make image  build the container image with docker, podman or buildah (BAKE_MODELS=0 unless given)
PY := .venv/bin/python
# Custom nodes come from GitHub at their pinned commits, or, where ../shared/custom_nodes holds their
# trees (CI and machines without GitHub), from there.
CUSTOM_NODES_ARCHIVES ?= $(if $(wildcard ../shared/custom_nodes/*.tar.gz),$(abspath ../shared/custom_nodes))
export CUSTOM_NODES_ARCHIVES
export RUNPOD_DEBUG_LEVEL ?= INFO

IMAGE ?= infinitetalk-worker:local
BAKE_MODELS ?= 0

.PHONY: setup run serve test test-fast test-image image image-tools bench clean

setup:
	bash scripts/install_system.sh
	bash scripts/install_worker.sh
	bash scripts/install_comfyui.sh
	bash scripts/install_custom_nodes.sh

run: setup
	mkdir -p output
	OUTPUT_VOLUME_DIR=$(CURDIR)/output $(PY) handler.py

serve: setup
	$(PY) handler.py --rp_serve_api --rp_api_port 8000

test: setup
	$(PY) -m pytest tests

# The fast tier (tests/support/tiers.py): no ComfyUI process, no image build.
test-fast: setup
	$(PY) -m pytest tests -m "not comfy and not image"

# Only the image test (builds the image from a local Debian base, runs the sample job in it).
test-image: setup image-tools
	$(PY) -m pytest tests/test_image.py

image:
	IMAGE=$(IMAGE) BAKE_MODELS=$(BAKE_MODELS) bash scripts/build_image.sh

image-tools:
	bash scripts/install_image_tools.sh

bench: setup
	$(PY) benchmarks/cpu_scaling.py

clean:
	rm -rf output .pytest_cache
