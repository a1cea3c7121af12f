# synap-segment-bridge: everything from a fresh clone with only Python 3.11 and make.
#   make run    serve config.yaml on 127.0.0.1:8080 (dry-run without a write key)
#   make test   lint, type-check and test (with branch coverage, floor 90 %)
#   make format apply ruff's fixes and formatting
#   make bench  benchmarks (not part of test), writes docs/benchmarks.md

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: running needs only the package; the test extra (pytest, ruff, mypy, ...) comes on
# top. A venv made by `make run` has only the first, so `make test` still installs the extra.
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint format typecheck pytest bench bench-deps clean packaging-deps

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/synap-bridge --config config.yaml serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix bridge tests bench
	$(BIN)/ruff format bridge tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Branch coverage of bridge/ (with the serve subprocesses) and a floor: 90 % (92.7 % when set).
pytest: $(TEST_STAMP)
	$(BIN)/pytest -q --cov=bridge --cov-branch --cov-report=term:skip-covered --cov-fail-under=90

test: lint typecheck pytest

# wrk (Debian) drives the HTTP load; py-spy samples the hot paths. Neither is a dependency of
# the bridge, so they are installed here, for the benchmarks only.
bench-deps: $(TEST_STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }; \
	  else echo "make bench needs wrk: sudo apt-get install wrk" >&2; exit 1; fi; }
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy

bench: bench-deps
	$(BIN)/python -m bench.run

# systemd-analyze (Debian package systemd) for tests/test_packaging.py; hadolint comes from the
# test extra. Kept out of test's prerequisites so a developer without root gets the test's own
# clear failure message; .ci/run calls it.
packaging-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; \
	  else echo "packaging-deps: install systemd-analyze (Debian/Ubuntu: sudo apt-get install systemd)" >&2; exit 1; fi; }

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
