# Two commands do all setup on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU build from PyPI's CPU wheel on this machine; on a GPU machine: make TORCH=torch
TORCH ?= torch==2.13.0
# Keras 3 on TensorFlow; CPU-only build for tests. On a GPU machine: make TENSORFLOW='tensorflow[and-cuda]'
TENSORFLOW ?= tensorflow-cpu==2.21.0
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: install run test test-fast lint lint-code profiles bench-dag bench-train clean

DSRI_PLUGIN := plugins/snakemake-executor-plugin-dsri
$(VENV)/.installed: pyproject.toml Makefile $(wildcard $(DSRI_PLUGIN)/pyproject.toml $(DSRI_PLUGIN)/*/*.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" "$(TENSORFLOW)"
	$(PY) -m pip install --quiet -e '.[test,slurm,dsri,lightning,huggingface]'
	# Snakemake finds executor plugins by top-level module name: a small package of its own
	$(PY) -m pip install --quiet ./$(DSRI_PLUGIN)
	touch $@

install: $(VENV)/.installed

## run: train the default config (config/config.yaml) on the local executor
run: install
	$(SNAKEMAKE) --profile profiles/local
	@echo
	@$(PY) -m segtrain.summary results

## test: the whole suite (unit + end-to-end with the real snakemake). Two tests at a time: most
## end-to-end time is waiting (deadlines, signals, a job's start-up), and each test's jobs share the
## cores; a test module runs on one worker whole (conftest.py). TEST_WORKERS=0: one at a time.
TEST_WORKERS ?= 2
test: install lint-code
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

## test-fast: unit tests only (seconds)
test-fast: install
	$(PY) -m pytest -q -m "not e2e" tests

## profiles: make `snakemake --profile dsri|dsri-jobs|slurm|local` resolve by name (links in ~/.config/snakemake)
PROFILE_HOME ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
profiles:
	mkdir -p "$(PROFILE_HOME)"
	for p in dsri dsri-jobs slurm local; do ln -sfn "$(CURDIR)/profiles/$$p" "$(PROFILE_HOME)/$$p"; done
	@echo "linked dsri, dsri-jobs, slurm and local into $(PROFILE_HOME)"

## lint: ruff (configured in pyproject.toml; make test runs it first and fails on a finding),
## snakefmt and Snakemake's own linter; fails on any finding but the one lint justified in the
## Snakefile (no conda environment per rule), as tests/test_workflow_style.py does in make test
lint: lint-code
	$(PY) -m pytest -q -p no:cacheprovider tests/test_workflow_style.py

lint-code: install
	$(VENV)/bin/ruff check .

## bench-dag: time and peak memory of `snakemake -n` on long chains (make bench-dag SEGMENTS="2000 10000")
SEGMENTS ?= 200 2000 10000
bench-dag: install
	$(PY) tests/bench_dag.py $(SEGMENTS)

## bench-train: training steps/s of the pipeline's loop against hand-written loops, and loader workers 0 vs 4
## (make bench-train BENCH_TRAIN="--quick --repeats 1": a smoke run, as tests/test_bench.py runs it)
BENCH_TRAIN ?= --repeats 5
bench-train: install
	$(PY) tests/bench_train.py $(BENCH_TRAIN)

clean:
	rm -rf results logs benchmarks .snakemake
