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

.PHONY: run test test-fast bench gpu-check her2st-folds report lint clean help

help:
	@echo "make run    set up .venv and run the default workflow (simulated cohort) -> results/, results/report.html"
	@echo "make test   set up .venv and run the test suite"
	@echo "make test-fast  the tests not marked slow (no whole-workflow runs)"
	@echo "make bench  set up .venv and run the benchmarks -> results/bench/*.json"
	@echo "make gpu-check  on a machine with NVIDIA GPUs: train, resume, embed and benchmark on them -> results/bench/gpu.json"
	@echo "make her2st-folds  HER2ST leave-one-section-out, every section tested in turn -> results/her2st_folds.tsv"

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

# Five workflow runs (about 10 min each on 2 cores), one per held-out section.
her2st-folds: $(STAMP)
	$(BIN)/pastflow folds --configfile config/her2st.yaml --out results/her2st_folds.tsv \
		--workdir results/her2st_folds --cores $(CORES)

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow/

clean:
	rm -rf results .snakemake
