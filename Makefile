# ext-authz — `make run` (demo: ext-authz + Envoy + upstream) and `make test` on a fresh machine.
#
# Every Python environment installs from uv.lock (exact versions and hashes), with a pinned uv that is
# itself installed with pip --require-hashes (tools/uv/requirements.txt). pyproject.toml keeps the ranges
# library users need; `make lock` moves the lock within them, `make test-latest` tries the newest.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TOOLS_DIR := $(or $(EXT_AUTHZ_TOOLS_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ext-authz/tools)
UV_VERSION := $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' tools/uv/requirements.txt)
UV_HOME := $(TOOLS_DIR)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
# uv uses the machine's Python (3.11+) and never downloads one; the venv is always ./.venv.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_NO_PROGRESS := 1

# Run as root (CI, containers) or through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL = $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: run test test-unit test-e2e test-latest prepare lock lint typecheck venv protos schema envoy-protos clean \
        system-deps bench bench-micro bench-hostile bench-envoy bench-propagation bench-receive-limit fuzz soak \
        bench-rss bench-scale tools spire helm istioctl dist docs docs-serve uv-pin

venv: $(STAMP)

# uv itself: once per version, into the tools cache, verified by hash. A Debian without python3-venv gets it.
$(UV): tools/uv/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (found: $$($(PYTHON) --version 2>&1)); set PYTHON=python3.X" >&2; exit 1; }
	@echo "installing uv $(UV_VERSION) into $(UV_HOME) (pinned with hashes; a few seconds, once)"
	@rm -rf $(UV_HOME).tmp && mkdir -p $(TOOLS_DIR)
	@$(PYTHON) -m venv $(UV_HOME).tmp 2>/dev/null || { \
	  rm -rf $(UV_HOME).tmp; \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  $(APT_INSTALL) python3-venv >/dev/null && $(PYTHON) -m venv $(UV_HOME).tmp; }
	@$(UV_HOME).tmp/bin/python -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
	  --require-hashes -r tools/uv/requirements.txt
	@rm -rf $(UV_HOME) && mv $(UV_HOME).tmp $(UV_HOME)

# The development environment: the project (editable), both extras and every dependency group, exactly as
# uv.lock says. A lock that no longer matches pyproject.toml is an error, never silently re-resolved.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(UV) lock --check -q 2>/dev/null || { echo "uv.lock is out of date with pyproject.toml: run 'make lock'" >&2; exit 1; }
	@test -d $(VENV) || echo "installing the Python environment from uv.lock into $(VENV) (~1 min the first time, seconds after)"
	@$(UV) sync --locked --all-extras -q
	@touch $(STAMP)

# Refresh uv.lock to the newest versions pyproject.toml allows (then run `make test` and commit the lock).
lock: | $(UV)
	$(UV) lock --upgrade
	@$(MAKE) --no-print-directory venv

# Move to another uv release: `make uv-pin UV_VERSION=X.Y.Z` rewrites tools/uv/requirements.txt from PyPI.
uv-pin:
	$(PYTHON) scripts/pin_uv.py $(UV_VERSION)

# make run SPIRE=1: the same demo, with a real spire-server and spire-agent issuing the identities.
run: venv $(if $(filter 1,$(SPIRE)),spire)
	$(VENV)/bin/ext-authz dev up demo --envoy-config envoy.yaml $(if $(filter 1,$(SPIRE)),--spire)

# Test tools built from the Go module proxy (tools/NAME/go.mod), cached outside the repository keyed by
# go.mod+go.sum (EXT_AUTHZ_TOOLS_DIR, default ~/.cache/ext-authz/tools): built once, then instant.
tools: spire helm istioctl

spire helm istioctl:
	@$(PYTHON) -m ext_authz.dev.tools $@ >/dev/null

# Tests run a real redis-server and promtool (Debian's redis-server and prometheus packages): install
# what is missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the tests (~1 min)"; \
	  $(APT_INSTALL) $$missing >/dev/null; \
	fi

# Everything the tests need, at once: the venv installs while the tools build and apt runs.
prepare: | $(UV)
	@$(MAKE) --no-print-directory -j4 venv system-deps spire helm istioctl

test: prepare
	$(PY) -m pytest -q -p no:cacheprovider

# Pure unit tests: nothing but the venv.
test-unit: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-e2e: prepare
	$(PY) -m pytest -q -p no:cacheprovider -m e2e

# The whole suite against the newest releases pyproject.toml allows, in .venv-latest (uv.lock is not
# touched): a maintainer sees a breaking upstream release before users do. Not part of `make test`.
test-latest: | $(UV)
	@$(MAKE) --no-print-directory -j4 system-deps spire helm istioctl
	$(UV) venv -q --clear .venv-latest
	$(UV) pip install -q --python .venv-latest --upgrade -e '.[native,tracing]' --group dev
	@$(UV) pip list -q --python .venv-latest --format freeze | grep -iE '^(cryptography|grpcio|protobuf|spiffe|joserfc|pydantic|redis|cel-expr-python)=' | tr '\n' ' '; echo
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider

# A wheel and an sdist in dist/, with their metadata checked.
dist: venv
	rm -rf dist
	$(UV) build -q --out-dir dist
	$(VENV)/bin/twine check --strict dist/*

# The documentation site (MkDocs + Material) into site/; a broken link or a page outside the nav is an error.
docs: venv
	$(VENV)/bin/mkdocs build --strict

docs-serve: venv
	$(VENV)/bin/mkdocs serve

# Longer fuzzing than `make test` does: every atheris target for FUZZ_SECONDS, then hypothesis with many
# more examples. Findings are written to fuzz-findings/ (crash-* inputs reproduce with the same command).
FUZZ_SECONDS ?= 60
fuzz: venv
	@mkdir -p fuzz-findings
	@for t in check_request structured_request spiffe_id xfcc certificate jwt config; do \
	  echo "== fuzzing $$t for $(FUZZ_SECONDS)s"; \
	  $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz-findings/ -print_final_stats=1 2>&1 \
	    | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|.*Uncaught)" || exit 1; \
	done
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/fuzz/test_properties.py

# Benchmarks measure; tests never time things. Results land in bench/results/.
bench: bench-micro bench-hostile bench-envoy bench-propagation bench-receive-limit

# Debian's h2load (nghttp2-client) drives the Envoy comparison.
bench-envoy: venv
	@command -v h2load >/dev/null 2>&1 || $(APT_INSTALL) nghttp2-client >/dev/null
	$(PY) bench/envoy_bench.py

bench-micro: venv
	$(PY) bench/micro.py

# What grpcio and pygrpc-native hold for requests over their receive limit (why auto keeps native off TCP).
bench-receive-limit: venv
	$(PY) bench/receive_limit.py

# The worst Check across hostile inputs within the limits, beside a normal one (target: none over 10 ms).
bench-hostile: venv
	$(PY) bench/hostile.py

# How cost grows with the work: rules, state up to 1,000,000 revocations (SQLite and Redis), distinct
# callers, a burst of 10,000 SETs and a reload of 10,000 rules under load (~15 minutes; not in `make bench`).
bench-scale: venv system-deps
	$(PY) bench/scale.py

# RSS after 1,000,000 distinct tokens (bounded caches): about 6 minutes, so not part of `make bench`.
bench-rss: venv
	$(PY) bench/micro.py --rss 1000000

# Two minutes through Envoy with revocations, exceptions and grants churning (also a test in `make test`).
soak: venv
	$(PY) bench/soak.py 120 150

bench-propagation: venv system-deps
	$(PY) bench/propagation.py 200

lint: venv
	$(VENV)/bin/ruff check ext_authz tests bench scripts
	$(VENV)/bin/ruff format --check ext_authz tests bench scripts
	$(VENV)/bin/mypy

typecheck: venv
	$(VENV)/bin/mypy

# The config's JSON Schema, and the Helm chart's values.schema.json that embeds it (a test checks both).
schema: venv
	$(VENV)/bin/ext-authz config schema > deploy/ext-authz.schema.json
	$(PY) scripts/embed_config_schema.py

# Our admin API and the few Envoy protos Check needs → ext_authz/_proto/ (committed; a test regenerates).
protos: venv
	$(PY) scripts/gen_protos.py

# The Envoy API files Check needs, as descriptors taken from this xds-protos release in a throwaway
# environment (ext-authz does not depend on it), then compiled by `make protos`.
XDS_PROTOS_VERSION := 1.85.0
envoy-protos: | $(UV)
	$(UV) run -q --no-project --isolated --with 'xds-protos==$(XDS_PROTOS_VERSION)' python scripts/envoy_descriptors.py
	@$(MAKE) --no-print-directory protos

clean:
	rm -rf $(VENV) .venv-latest .mypy_cache .ruff_cache .pytest_cache build dist site *.egg-info demo
