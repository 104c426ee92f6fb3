# digitdrift: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_EPOCHS ?= 4
PYTEST_ARGS ?=
# `make test` runs the modules on this many pytest-xdist workers, each module whole on one (tests/conftest.py); on
# 2 cores 3 beat 2 (15 against at least 18 minutes when first measured, much of a test then waiting on servers)
# and 4 (21:15 against 23:41 for 515 tests on 2026-12-07, both cores 97% busy)
TEST_WORKERS ?= 3

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1
# TensorFlow's C++ logger prints harmless "NodeDef mentions attribute use_unbounded_threadpool"
# errors for every Keras data pipeline (a Keras 3.15 / TF 2.21 mismatch); Python errors still show.
export TF_CPP_MIN_LOG_LEVEL := 3

.DEFAULT_GOAL := help
.PHONY: help venv azurite system-packages demo-packages stack stack-down data train promote demo evaluate loop test test-unit test-quick test-integration lint bench-train clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.lock
	@echo "==> creating $(VENV) and installing the pinned set (requirements.lock)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements.lock
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed ## create or reuse .venv with the pinned dependencies

AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob
AZURITE_VERSION := 3.37.0
$(AZURITE):
	@echo "==> installing the Azure Storage emulator (npm azurite@$(AZURITE_VERSION)) into $(VENV)/node"
	npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

azurite: $(AZURITE) ## install Azurite (the Azure Storage emulator the tests run blob storage on)

# Debian packages, installed when missing (as root; otherwise the apt-get line to run is printed)
# OpenBLAS: Spark ML's native BLAS (netlib loads libblas.so.3; without it Spark falls back to Java's vector code)
SPARK_BLAS := /usr/lib/x86_64-linux-gnu/libopenblas.so.0=libopenblas0-pthread
SYSTEM_TEST := java=openjdk-17-jre-headless chromium=chromium curl=curl npm=npm \
	/usr/lib/postgresql/15/bin/initdb=postgresql-15 haproxy=haproxy openssl=openssl $(SPARK_BLAS)
SYSTEM_DEMO := curl=curl
system-packages:
	@scripts/debian-packages.sh $(SYSTEM_TEST)
demo-packages:
	@scripts/debian-packages.sh $(SYSTEM_DEMO)

data: venv ## fill the dataset cache (.digitdrift/data) from ../shared/data or the public downloads
	$(PY) -m common fetch

train: data ## train the Keras CNN, log it to MLflow, register digits-cnn@challenger
	$(PY) -m training keras

promote: venv ## move digits-cnn@champion to the challenger if it clears the accuracy bar
	$(PY) -m training promote

demo: demo-packages data ## the main job: train (or reuse the champion), serve, simulate, monitor, evaluate; says where to look
	scripts/demo.sh $(DEMO_EPOCHS) 200

evaluate: data ## the monitor's scorecard at 200 requests per window, into bench/results/
	SCORECARD_COMMAND="make evaluate" scripts/demo.sh $(DEMO_EPOCHS) 200 bench/results/monitoring_evaluation.json

loop: data ## the closed loop on the closed-loop scenario: alert, labels, retrain, safe promotion, the server follows (needs a champion: make demo)
	$(PY) -m loop simulate

test: system-packages venv $(AZURITE) ## run the whole test suite (unit and integration) on parallel workers, the slowest 25 named
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

test-unit: venv ## run the fast unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-quick: venv ## the edit-test loop: the unit tests, stopping at the first failure
	$(PY) -m pytest tests/unit -x -q $(PYTEST_ARGS)

test-integration: system-packages venv $(AZURITE) ## run the integration tests (real MLflow, servers, Spark)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: venv ## ruff over the project
	$(VENV)/bin/ruff check .

bench-train: data ## benchmark: full-MNIST training to accuracy, written to bench/results/
	$(PY) -m bench.train_keras

stack: system-packages venv $(AZURITE) ## the team stack on loopback: PostgreSQL, Azurite, mlflow server, Spark cluster, and replicas behind HAProxy once a champion exists
	$(PY) -m devtools.stack up

stack-down: ## stop exactly what make stack started
	$(PY) -m devtools.stack down

clean: ## remove the local state (.digitdrift: tracking store, artifacts, caches, logs)
	rm -rf .digitdrift
