# synap-segment-bridge: everything from a fresh clone with only Python 3.11 and make.
#   make run    serve config.yaml on 127.0.0.1:8080 (dry-run without a write key)
#   make test   lint, type-check and test (with branch coverage, floor 90 %)
#   make test-fast  the inner loop: units, mapping, the contract suite on SQLite (no processes,
#               no PostgreSQL; tests/tiers.py marks the rest)
#   make format apply ruff's fixes and formatting
#   make bench  benchmarks (not part of test), writes docs/benchmarks.md
#   make image-test  build the Dockerfile with buildah, run it with podman, check it (root)
#   make lock   refresh requirements.lock (pinned, hashed runtime dependencies)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: running needs only the package; the test extra (pytest, ruff, mypy, ...) comes on
# top. A venv made by `make run` has only the first, so `make test` still installs the extra.
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast lint format typecheck pytest bench bench-deps clean packaging-deps
.PHONY: monitoring-deps image-deps image-test lock postgres-deps browser-deps compose-deps

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

# The fast tier (tests/tiers.py): no process, database, browser or image of its own.
FAST_TIER = not process and not postgres and not image and not browser

# Branch coverage of bridge/ (with the serve subprocesses) and a floor: 90 % (92.7 % when set).
# The fast tier runs on two workers (115 -> ~60 s), the rest one test at a time (the tests that
# start processes measure and load the machine); the second run adds to the first's coverage
# and checks the floor on both together.
pytest: $(TEST_STAMP) postgres-deps browser-deps
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --cov=bridge --cov-branch --cov-report= -m "$(FAST_TIER)"
	$(BIN)/pytest -q -p no:cacheprovider --cov=bridge --cov-branch --cov-append \
		--cov-report=term:skip-covered --cov-fail-under=90 -m "not ($(FAST_TIER))"

test: lint typecheck pytest

# No coverage floor: a part of the suite cannot reach it. Two workers (pytest-xdist): the fast
# tier mostly waits on sockets and timers, so it finishes in about half the time on 2 cores.
test-fast: $(TEST_STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -n 2 -m "$(FAST_TIER)"

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

# promtool (Debian package prometheus) for tests/test_dashboards.py: `promtool check rules` and
# `promtool test rules` on deploy/prometheus; the same package's server for
# tests/test_prometheus_real.py (real alerts during real faults). Like packaging-deps: .ci/run
# calls it, and without root the test itself fails with the fix.
monitoring-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "monitoring-deps: install promtool (Debian/Ubuntu: sudo apt-get install prometheus)" >&2; exit 1; fi; }

# podman-compose (Debian's compose tool) for tests/test_compose.py: deploy/compose.yaml read the
# way `podman-compose up` reads it. Like monitoring-deps: .ci/run calls it.
compose-deps:
	@command -v podman-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman-compose; \
	  else echo "compose-deps: install podman-compose (Debian/Ubuntu: sudo apt-get install podman-compose)" >&2; exit 1; fi; }

# The container image, proven (tests/container_image.py): buildah builds the Dockerfile, podman
# runs it. Not part of `make test` (a minute and a half, root); .ci/run calls it. debootstrap
# makes a local python:3.11-slim-bookworm when no registry can be reached.
IMAGE_TOOLS := buildah podman runc conmon netavark aardvark-dns iptables debootstrap
IMAGE_TEST_TIMEOUT ?= 600

image-deps:
	@missing=""; for t in buildah podman runc conmon iptables debootstrap; do \
	  command -v $$t >/dev/null 2>&1 || [ -x /usr/bin/$$t ] || [ -x /usr/sbin/$$t ] || [ -x /usr/libexec/podman/$$t ] || missing="$$missing $$t"; done; \
	[ -x /usr/lib/podman/netavark ] || missing="$$missing netavark"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "image-deps: installing host packages with apt-get:$$missing (from $(IMAGE_TOOLS))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(IMAGE_TOOLS); \
	  else echo "image-deps: missing$$missing (Debian: sudo apt-get install $(IMAGE_TOOLS))" >&2; exit 1; fi; }

image-test: image-deps $(TEST_STAMP)
	timeout $(IMAGE_TEST_TIMEOUT) $(BIN)/pytest -q -p no:cacheprovider tests/container_image.py

# requirements.lock: every runtime dependency pinned with the sha256 of each of its files on
# PyPI (pip-compile from pip-tools, installed here only). The image installs from it with
# --require-hashes; systemd installs may too (docs/operations.md). Resolved against PyPI alone
# (no local pip configuration), so the hashes are those of the files everybody downloads.
lock: $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4'
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(BIN)/pip-compile --quiet --upgrade \
	  --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.lock pyproject.toml

# PostgreSQL server programs (Debian package postgresql) for the tests' throwaway cluster
# (tests/pgcluster.py). Installed when missing and root; otherwise the tests fail naming this
# command (never a skip).
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	  else echo "postgres-deps: the tests need PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql)" >&2; fi; }

# Chromium and its WebDriver (Debian packages chromium, chromium-driver) for the console's
# browser tests (tests/test_console_browser.py, marker browser). Installed when missing and
# root; otherwise this fails naming the command (never a skip).
browser-deps:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	  else echo "browser-deps: the console's browser tests need Chromium (Debian/Ubuntu: sudo apt-get install chromium chromium-driver)" >&2; exit 1; fi; }

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
