# The two commands a new user types: `make run` and `make test`.
# Both create .venv when it is missing and install the pinned dependencies into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pastflow-installed
CORES  ?= 2
# Rules call the `pastflow` command of this venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --printshellcmds

.PHONY: run test test-fast bench gpu-check report lint clean help

help:
	@echo "make run    set up .venv and run the default workflow (simulated cohort) -> results/, results/report.html"
	@echo "make test   set up .venv and run the test suite"
	@echo "make test-fast  the tests not marked slow (no whole-workflow runs)"
	@echo "make bench  set up .venv and run the benchmarks -> results/bench/*.json"
	@echo "make gpu-check  on a machine with NVIDIA GPUs: train, resume, embed and benchmark on them -> results/bench/gpu.json"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the pins change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE)
	$(SNAKEMAKE) --report results/report.html
	@echo "Done. Report: $(CURDIR)/results/report.html (open it in a browser); outputs in results/"

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not gpu" tests --ignore=tests/benchmarks

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow and not gpu" tests --ignore=tests/benchmarks

bench: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/benchmarks

# Every test is skipped (exit 0) where torch sees no CUDA device.
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -rs -s -m gpu tests/gpu

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow/

clean:
	rm -rf results .snakemake
