# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv with pip when it is missing (no conda needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= quick
DATASET ?= shapes

.PHONY: demo test lab bench clean-reports venv gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

## the main job: run every notebook at PROFILE on DATASET, then write a summary
demo: $(STAMP)
	$(BIN)/python -m attnlab reproduce --profile $(PROFILE) --dataset $(DATASET)

## the test suite (smoke-size data; notebooks executed with papermill)
test: $(STAMP)
	$(BIN)/python -m pytest

## JupyterLab on the notebooks
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## speed and memory benchmarks (see README)
bench: $(STAMP)
	$(BIN)/python -m attnlab bench

## on a CUDA machine, with no venv and no network: GPU tests, benchmark, timed quick CIFAR-10
## run; report in reports/gpu-check. CIFAR= the offline copy (needed once, until cached).
CIFAR ?=
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m attnlab.gpucheck --out reports/gpu-check $(if $(CIFAR),--cifar "$(CIFAR)")

clean-reports:
	rm -rf reports/
