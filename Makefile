# jaxcnn developer commands. `make test` is what CI runs (.ci/run).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# 8 virtual CPU devices for tests and the default training run.
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu
PYTEST_WORKERS ?= 2

.PHONY: setup test test-fast lint format train bench-comm bench-step-comm clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check jaxcnn tests experiments
	$(BIN)/ruff format --check jaxcnn tests experiments

format: setup
	$(BIN)/ruff check --fix jaxcnn tests experiments
	$(BIN)/ruff format jaxcnn tests experiments

test: setup lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup tests

# The edit-test loop (about 2 minutes on 2 cores): ruff, then the library's tests not marked slow
# (one or two cases of every check; `make test` runs them all). runner/, planner/ and models/ tests
# join FAST_TESTS once their slow tests carry @pytest.mark.slow.
FAST_TESTS ?= tests/test_*.py tests/algorithms tests/nn
test-fast: setup lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" $(FAST_TESTS)

train: setup
	$(BIN)/jaxcnn train configs/default.yaml

bench-comm: setup
	$(BIN)/python experiments/bench_comm.py

bench-step-comm: setup
	nice $(BIN)/python experiments/bench_step_comm.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
