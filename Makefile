# The two commands a newcomer needs: `make demo` and `make test`.
# Everything they need is installed by the repo's own files: system packages through
# dev/bootstrap-system (Debian's packages, as root), Python packages into .venv, and the
# Kafka jars into the user's cache directory on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test check lint unit integration e2e bench clean

install: $(STAMP)

$(STAMP): pyproject.toml dev/bootstrap-system
	dev/bootstrap-system
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,synapse]'
	$(BIN)/python -m adapter.localstack fetch-kafka
	touch $(STAMP)

## Run the main job on local defaults.
demo: install
	$(BIN)/synkafka demo

## Install everything and run the whole suite (what .ci/run calls).
test: install
	dev/check

lint: install
	dev/check --lint-only

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install
	$(BIN)/python -m pytest tests/integration -q

e2e: install
	$(BIN)/python -m pytest tests/e2e -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
