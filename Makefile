# Two commands do everything on a fresh Linux machine (Python 3 + apt):
#   make run    set up, then run the sample job (test_input.json) through the runpod SDK's local mode
#   make test   set up, then run the whole test suite
PY := .venv/bin/python
# Custom nodes come from GitHub at their pinned commits, or, where ../shared/custom_nodes holds their
# trees (CI and machines without GitHub), from there.
CUSTOM_NODES_ARCHIVES ?= $(if $(wildcard ../shared/custom_nodes/*.tar.gz),$(abspath ../shared/custom_nodes))
export CUSTOM_NODES_ARCHIVES
export RUNPOD_DEBUG_LEVEL ?= INFO

.PHONY: setup run serve test bench clean

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

bench: setup
	$(PY) benchmarks/cpu_scaling.py

clean:
	rm -rf output .pytest_cache
