# Two commands do everything on a fresh Linux machine (Python 3 + apt):
#   make run    set up, then run the sample job (test_input.json) through the runpod SDK's local mode
#   make test   set up, then run the whole test suite
PY := .venv/bin/python
export RUNPOD_DEBUG_LEVEL ?= INFO

.PHONY: setup run serve test bench clean

setup:
	bash scripts/install_system.sh
	bash scripts/install_worker.sh
	bash scripts/install_comfyui.sh

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
