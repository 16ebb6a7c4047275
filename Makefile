# Two commands for a fresh machine: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/smoke.yaml

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) -m ray_jobs.train --config $(CONFIG) --storage runs

test: $(STAMP)
	$(PY) -m pytest -q

# CPU benchmarks, one JSON line each (bench/RESULTS.md); the GPU one is bench/gpu.sh.
bench: $(STAMP)
	for b in checkpoint loop_overhead ingest scaling startup solver; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs
