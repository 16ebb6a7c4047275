# Two commands for a fresh machine: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

.PHONY: setup run check test test-ray test-cluster bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) -m ray_jobs.train --config $(CONFIG) --storage runs

# Static checks and every test that needs no Ray (the fast tier, about a minute).
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports  # imports point down the layers (pyproject.toml [tool.importlinter])
	$(PY) -m pytest -q -m "not ray"

# The end-to-end tests on one shared local Ray session.
test-ray: $(STAMP)
	$(PY) -m pytest -q -m "ray and not cluster"

# The services tier: the autoscaler, elastic and spot-preemption tests on a local autoscaling
# cluster, and --storage s3:// on a local S3 server (about 16 minutes; CI runs them after `make test`).
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster

# Everything CI runs: the fast tier first (it fails in a minute if anything basic is wrong).
test: check test-ray

# CPU benchmarks, one JSON line each (bench/RESULTS.md); the GPU one is bench/gpu.sh.
bench: $(STAMP)
	for b in checkpoint loop_overhead ingest scaling startup solver; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs
