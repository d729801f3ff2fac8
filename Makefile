# jaxcnn developer commands. `make test` is what CI runs (.ci/run).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# JAX picks the platform: a GPU or TPU where there is one, else the CPU. XLA_FLAGS gives the CPU
# platform 8 virtual devices (tests, and `make train` on a machine without an accelerator); it only
# affects the CPU platform, so it is harmless on accelerator machines. Nothing here sets JAX_PLATFORMS
# (tests/test_makefile.py checks it); tests/conftest.py keeps the test suite on the 8 CPU devices.
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
PYTEST_WORKERS ?= 2

.PHONY: setup test test-sweep test-fast test-accelerator lint format train bench-comm bench-step-comm bench-step-time clean

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
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) --dist loadgroup --durations=60 -m "not sweep" tests

# The exhaustive sweeps (algorithm x grid x case beyond the cases `make test` keeps; see SWEEP_KEEP in
# tests/conftest.py): about as long again as `make test`.
test-sweep: setup
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) -m sweep tests

# The edit-test loop (2-3 minutes on 2 cores): ruff, then the library's tests not marked slow (one or
# two cases of every check; `make test` runs them all, and tests/faults and tests/multiprocess).
FAST_TESTS ?= tests/test_*.py tests/algorithms tests/nn tests/runner tests/planner tests/models
test-fast: setup lint
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) -m "not slow" $(FAST_TESTS)

# A GPU/TPU smoke test (a distributed conv and a short training run on the accelerator, in a subprocess
# without JAX_PLATFORMS); skipped on a machine without one.
test-accelerator: setup
	$(BIN)/python -m pytest -q -rs tests/test_accelerator.py

# configs/default.yaml places its convolutions on 8 devices: the virtual CPU devices where there is no
# accelerator, the accelerators where there are 8 or more. With fewer accelerators (one GPU), the planner
# places every layer on what there is (mesh.n=-1, model.algorithms=auto); TRAIN_ARGS=... overrides.
TRAIN_CONFIG ?= configs/default.yaml
TRAIN_ARGS   ?= $(shell $(BIN)/python -c "import jax; print('' if jax.default_backend() == 'cpu' or jax.device_count() >= 8 else 'mesh.n=-1 model.algorithms=auto')")
train: setup
	$(BIN)/jaxcnn train $(TRAIN_CONFIG) $(TRAIN_ARGS)

# BENCH_ARGS: e.g. --P 64 --networks vgg16 --regimes hires (a subset), --from-cache (no measuring)
BENCH_ARGS ?=
bench-comm: setup
	$(BIN)/python experiments/bench_comm.py $(BENCH_ARGS)

bench-step-comm: setup
	nice $(BIN)/python experiments/bench_step_comm.py

# Predicted against measured step time of 17 (model, placement) cases on 8 CPU devices: calibrates
# first if this machine has no profile, writes docs/step_time.md's validation table and its scatter plot
# (5-10 minutes on 2 cores). STEP_TIME_ARGS: e.g. --rounds 7, --cases small_cnn-data,small_cnn-2d
STEP_TIME_ARGS ?=
bench-step-time: setup
	$(BIN)/python experiments/bench_step_time.py $(STEP_TIME_ARGS)

# The 3-D U-Net's train step on 256^3 volumes compiled (never run) on 64 fake CPU devices and on one:
# memory per device (docs/unet3d_memory.md).
.PHONY: unet3d-memory
unet3d-memory: setup
	nice $(BIN)/python experiments/unet3d_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
