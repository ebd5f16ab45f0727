# The README's two commands live here: `make run` (the demo workflow, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# pytest processes of `make test` (pytest-xdist): one per core
TEST_JOBS ?= auto

.PHONY: setup run test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[workflow,test]'
	touch $@

## the workflow on the bundled demo images with the bundled model, offline
run: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores $(CORES) --workflow-profile workflow/profiles/local
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores $(CORES) --workflow-profile workflow/profiles/local --report results/report.html

# cellpose 3.1.1.3, the reference of the classic U-Net, in a folder of its own: cellpose 3 and 4 cannot
# share one environment (same package name); the tests call it in a subprocess with this folder on PYTHONPATH
$(VENV)/cellpose3/.installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target $(VENV)/cellpose3 cellpose==3.1.1.3 numba llvmlite
	touch $@

## every test, real ImageJ and SLURM included (.ci/run installs those first)
test: setup $(VENV)/cellpose3/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -n $(TEST_JOBS)

test-fast: setup $(VENV)/cellpose3/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -m "not slow and not slurm and not imagej and not workflow"

## the workflow (snakemake --lint, snakefmt), the Python code (ruff format and lint) and the layers (lint-imports)
lint: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --lint
	PATH="$(abspath $(VENV))/bin:$$PATH" snakefmt --check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf results .snakemake
