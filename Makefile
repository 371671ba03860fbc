# Two commands on a fresh machine (see README):  make demo   and   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Keep every cache and state inside the checkout (nothing in $HOME), offline model loading.
export SAFESYNTH_HOME ?= $(CURDIR)/.safesynth
export PREFECT_HOME ?= $(SAFESYNTH_HOME)/prefect
export HF_HOME ?= $(SAFESYNTH_HOME)/hf
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# torch first, pinned: the CPU build; an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)  ## install, then run a real DP release of the bundled demo data through the Prefect flow
	$(BIN)/safesynth release data/demo.yaml

test: $(STAMP)  ## the whole suite, slow tests included (what CI runs)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check safesynth tasks flows deployments tests bench data

bench: $(STAMP)
	$(BIN)/python bench/bench_quality.py

clean:
	rm -rf $(VENV) .safesynth releases
