# The two commands a newcomer needs: `make demo` and `make test`.
# Everything they need is installed by the repo's own files: system packages through
# dev/bootstrap-system (Debian's packages, as root), Python packages into .venv, and the
# Kafka jars into the user's cache directory on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock-check lock upgrade wheel-check demo test check lint unit integration e2e bench clean

# Every install comes from requirements.lock (hashes required); `lock-check` runs first
# on every make, so a lock that no longer matches pyproject.toml stops here, in one line.
install: lock-check $(STAMP)

lock-check:
	@$(PYTHON) dev/lock check

$(STAMP): requirements.lock pyproject.toml dev/bootstrap-system
	dev/bootstrap-system
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv (itself pinned with hashes in the lock) installs the rest, much faster than pip.
	$(PYTHON) dev/lock export uv > $(VENV)/uv-requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/uv-requirements.txt
	$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python -m adapter.devstack.services fetch-kafka
	touch $(STAMP)

## Re-resolve requirements.lock after editing pyproject.toml (keeps every pin that fits).
lock:
	test -x $(BIN)/uv || $(MAKE) $(STAMP)
	$(PYTHON) dev/lock update

## Move every dependency to its newest allowed release; commit the lock, run `make test`.
upgrade:
	test -x $(BIN)/uv || $(MAKE) $(STAMP)
	$(PYTHON) dev/lock upgrade

## Build the wheel, install it from the lock outside the checkout, run it (make test does this).
wheel-check: install
	dev/wheel-check

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
